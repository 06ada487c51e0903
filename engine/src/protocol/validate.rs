//! Raw protocol -> frozen [`Protocol`], collecting every problem with a span, a stable code and
//! a hint. Plain code: no I/O.
//!
//! Codes are stable and documented in README ("Protocol diagnostics"):
//! B001 syntax/shape, B002 version, B003 empty text, B004 duplicate name, B005 bad identifier,
//! B010 unknown message, B011 wrong direction, B012 unknown token kind, B013 bad algorithm,
//! B014 bad token source, B020 bad path pattern, B021 bad template, B022 bad parameter,
//! B030 bad field, B031 bad action, B040 bad close code, B041 reason too long,
//! B042 bad reconnect class, B043 unknown close name, B044 missing close_on entry,
//! B050 limit out of range, B060 bad rule, B070 bad hook, B071 bad HTTP endpoint,
//! B072 bad filter, B080 unknown geo pool or dispatch, B081 bad geo field reference,
//! B082 bad geo action or dispatch.

mod geo;

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use serde_json::Value;

use super::diag::Diagnostic;
use super::model::*;
use super::raw::*;
use crate::message::Frame;

/// Parses and validates protocol text. Every problem is reported, not just the first.
pub fn load_protocol(src: &str) -> Result<Protocol, Vec<Diagnostic>> {
    let raw: RawProtocol = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => return Err(vec![toml_error(&e)]),
    };
    let mut v = Validator::default();
    let mut p = v.protocol(raw);
    if v.diags.is_empty() {
        compile_frames(&mut p);
        Ok(p)
    } else {
        Err(v.diags)
    }
}

/// Compiles every action that does not forward the client's fields into a [`Frame`], once,
/// so a reply or broadcast is spliced from bytes instead of built through a `Map`.
fn compile_frames(p: &mut Protocol) {
    let frames: Vec<_> = p
        .actions()
        .map(|a| {
            (!a.forward)
                .then(|| Frame::compile(&p.messages[a.send], &a.with))
                .flatten()
        })
        .collect();
    for (a, f) in p.actions_mut().zip(frames) {
        a.frame = f;
    }
}

/// A TOML syntax or shape error as a diagnostic (B001).
pub fn toml_error(e: &toml::de::Error) -> Diagnostic {
    let span = e.span().unwrap_or(0..0);
    let msg = e.message().trim().to_owned();
    let help = if msg.contains("unknown field") {
        "remove the key or fix its spelling; the schema is closed"
    } else if msg.contains("missing field") {
        "add the required key"
    } else {
        "fix the TOML at this location"
    };
    Diagnostic::new("B001", msg).label(span, "here").help(help)
}

const MAX_BYTES: i64 = 16 * 1024 * 1024;

#[derive(Default)]
struct Validator {
    diags: Vec<Diagnostic>,
    hook_names: HashMap<String, HookId>,
    /// Hooks are awaited at handshakes and HTTP requests only, never per message.
    hooks_allowed: bool,
    /// `{minted}` exists only in an HTTP endpoint that mints a token.
    minted_allowed: bool,
    /// Which variables the template being validated may use; see [`GeoScope`].
    geo_scope: GeoScope,
    /// Every claim a template or condition names; see [`Protocol::claims_read`].
    claims_read: std::collections::BTreeSet<String>,
}

/// Geo templates are rendered on a pool's owner shard, away from any connection, so there
/// only `{geo.*}`, `{now.*}` and `{gen.id}` (and, for dispatch, `{in.*}` of the body) exist.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum GeoScope {
    #[default]
    Off,
    Only,
    WithBody,
}

struct Names {
    messages: HashMap<String, (MsgId, Direction)>,
    closes: HashMap<String, CloseId>,
    tokens: HashMap<String, TokenId>,
    pools: HashMap<String, usize>,
    /// Each pool's key template as written, parsed again against each message that uses it.
    pool_keys: Vec<S<String>>,
    dispatches: HashMap<String, usize>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

impl Validator {
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn about(&mut self, what: &str, about: &S<String>) -> String {
        if about.get_ref().trim().is_empty() {
            self.err(
                Diagnostic::new("B003", format!("{what} has an empty `about`"))
                    .label(about.span(), "empty description")
                    .help(
                        "say in one sentence what this is for; it is the documentation users read",
                    ),
            );
        }
        about.get_ref().trim().to_owned()
    }

    fn ident(&mut self, what: &str, name: &S<String>) {
        if !is_ident(name.get_ref()) {
            self.err(
                Diagnostic::new("B005", format!("{what} name `{}` is not a valid identifier", name.get_ref()))
                    .label(name.span(), "invalid name")
                    .help("use lowercase letters, digits and `_`, starting with a letter, at most 64 characters"),
            );
        }
    }

    fn limit(&mut self, v: &Option<S<i64>>, name: &str, min: i64, max: i64, default: i64) -> i64 {
        match v {
            None => default,
            Some(s) => {
                let x = *s.get_ref();
                if x < min || x > max {
                    self.err(
                        Diagnostic::new("B050", format!("limit `{name}` = {x} is out of range"))
                            .label(s.span(), format!("must be between {min} and {max}"))
                            .help(format!("the default is {default}")),
                    );
                    default
                } else {
                    x
                }
            }
        }
    }

    fn protocol(&mut self, raw: RawProtocol) -> Protocol {
        if *raw.version.get_ref() != 1 {
            self.err(
                Diagnostic::new(
                    "B002",
                    format!("unsupported protocol version {}", raw.version.get_ref()),
                )
                .label(raw.version.span(), "unsupported")
                .help("this Beacon understands `version = 1`"),
            );
        }
        self.ident("protocol", &raw.name);
        let about = self.about("the protocol", &raw.about);

        // Closes first: everything else refers to them by name.
        let mut closes = Vec::new();
        let mut close_names = HashMap::new();
        for (name, c) in &raw.close {
            self.ident("close", name);
            let spec = self.close(name, c);
            close_names.insert(name.get_ref().clone(), closes.len());
            closes.push(spec);
        }
        self.unique_close_codes(&raw);

        let mut hooks = Vec::new();
        for (name, h) in &raw.hooks {
            self.ident("hook", name);
            if let Some(hook) = self.hook(name, h, &close_names) {
                self.hook_names.insert(name.get_ref().clone(), hooks.len());
                hooks.push(hook);
            }
        }

        // Messages: names and directions before bodies, since actions refer to other messages.
        let mut names = Names {
            messages: HashMap::new(),
            closes: close_names,
            tokens: HashMap::new(),
            pools: HashMap::new(),
            pool_keys: Vec::new(),
            dispatches: HashMap::new(),
        };
        if let Some(g) = &raw.geo {
            for (i, name) in g.pools.keys().enumerate() {
                self.ident("geo pool", name);
                names.pools.insert(name.get_ref().clone(), i);
            }
            names.pool_keys = g.pools.values().map(|p| p.key.clone()).collect();
            for (i, d) in g.dispatch.iter().enumerate() {
                self.ident("dispatch", &d.name);
                names.dispatches.insert(d.name.get_ref().clone(), i);
            }
        }
        let mut wire_seen: HashMap<(String, bool), Range<usize>> = HashMap::new();
        for (i, (name, m)) in raw.messages.iter().enumerate() {
            self.ident("message", name);
            let dir = match m.direction.get_ref().as_str() {
                "client" => Direction::Client,
                "server" => Direction::Server,
                "both" => Direction::Both,
                other => {
                    self.err(
                        Diagnostic::new("B030", format!("unknown direction `{other}`"))
                            .label(m.direction.span(), "unknown direction")
                            .help("use \"client\" (client to server), \"server\" (server to client) or \"both\""),
                    );
                    Direction::Both
                }
            };
            names.messages.insert(name.get_ref().clone(), (i, dir));
            let wire = m
                .wire_type
                .as_ref()
                .map(|w| w.get_ref().clone())
                .unwrap_or_else(|| name.get_ref().clone());
            for outbound in [true, false] {
                let applies = if outbound {
                    dir.outbound()
                } else {
                    dir.inbound()
                };
                if !applies {
                    continue;
                }
                let span = m
                    .wire_type
                    .as_ref()
                    .map(|w| w.span())
                    .unwrap_or(name.span());
                if let Some(prev) = wire_seen.insert((wire.clone(), outbound), span.clone()) {
                    if outbound {
                        self.err(
                            Diagnostic::new("B004", format!("two server messages share the wire type `{wire}`"))
                                .label(span, "second use")
                                .label(prev, "first use")
                                .help("the publish API routes by wire type; give each server message its own"),
                        );
                    }
                }
            }
        }

        let limits_raw = raw.limits.as_ref();
        let limits = self.limits(limits_raw);
        let mut rates: HashMap<MsgId, Rate> = HashMap::new();
        if let Some(l) = limits_raw {
            for (name, r) in &l.rate {
                match names.messages.get(name.get_ref()) {
                    Some(&(id, dir)) if dir.inbound() => {
                        let ps = *r.per_second.get_ref();
                        let burst = *r.burst.get_ref();
                        if !(ps > 0.0 && ps <= 1e6 && (1..=1_000_000).contains(&burst)) {
                            self.err(
                                Diagnostic::new("B050", format!("rate for `{}` is out of range", name.get_ref()))
                                    .label(r.per_second.span(), "per_second must be in (0, 1e6]")
                                    .label(r.burst.span(), "burst must be in 1..=1000000")
                                    .help("e.g. `{ per_second = 2.0, burst = 10 }`"),
                            );
                        } else {
                            rates.insert(
                                id,
                                Rate {
                                    per_second: ps,
                                    burst: burst as u32,
                                },
                            );
                        }
                    }
                    Some(_) => self.err(
                        Diagnostic::new("B011", format!("rate limit on `{}`, which clients cannot send", name.get_ref()))
                            .label(name.span(), "server-only message")
                            .help("rate limits apply to client messages (direction \"client\" or \"both\")"),
                    ),
                    None => self.unknown_message(name, &names),
                }
            }
        }

        let mut tokens = Vec::new();
        for (name, t) in &raw.tokens {
            self.ident("token", name);
            names.tokens.insert(name.get_ref().clone(), tokens.len());
            tokens.push(self.token(name, t));
        }

        let mut messages = Vec::new();
        for (i, (name, m)) in raw.messages.iter().enumerate() {
            let mut spec = self.message(name, m, &names);
            spec.rate = rates.get(&i).copied();
            messages.push(spec);
        }

        let mut endpoints = Vec::new();
        let mut endpoint_names: HashMap<String, Range<usize>> = HashMap::new();
        let mut paths: HashMap<String, Range<usize>> = HashMap::new();
        for e in &raw.endpoints {
            self.ident("endpoint", &e.name);
            if let Some(prev) = endpoint_names.insert(e.name.get_ref().clone(), e.name.span()) {
                self.err(
                    Diagnostic::new(
                        "B004",
                        format!("duplicate endpoint name `{}`", e.name.get_ref()),
                    )
                    .label(e.name.span(), "second definition")
                    .label(prev, "first definition")
                    .help("endpoint names label metrics and hook calls; make them unique"),
                );
            }
            if let Some(ep) = self.endpoint(e, &names, &messages) {
                let shape = ep
                    .path
                    .segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(l) => l.clone(),
                        Segment::Param(_) => "{}".into(),
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                if let Some(prev) = paths.insert(shape, e.path.span()) {
                    self.err(
                        Diagnostic::new(
                            "B020",
                            format!("path `{}` overlaps an earlier endpoint", e.path.get_ref()),
                        )
                        .label(e.path.span(), "never reached")
                        .label(prev, "matches first")
                        .help("two endpoints cannot have the same path shape"),
                    );
                }
                endpoints.push(ep);
            }
        }
        if raw.endpoints.is_empty() {
            self.err(
                Diagnostic::new("B001", "the protocol declares no endpoints")
                    .label(raw.name.span(), "in this protocol")
                    .help("add at least one `[[endpoints]]` table"),
            );
        }

        let mut map = [0usize; Rejection::ALL.len()];
        let keys: HashSet<&str> = Rejection::ALL.iter().map(|r| r.key()).collect();
        for k in raw.close_on.keys() {
            if !keys.contains(k.get_ref().as_str()) {
                self.err(
                    Diagnostic::new(
                        "B044",
                        format!("`{}` is not a rejection the engine makes", k.get_ref()),
                    )
                    .label(k.span(), "unknown key")
                    .help(format!(
                        "known keys: {}",
                        Rejection::ALL
                            .iter()
                            .map(|r| r.key())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
        }
        for r in Rejection::ALL {
            let entry = raw.close_on.iter().find(|(k, _)| k.get_ref() == r.key());
            match entry {
                // Only needed when the per-user cap it reports is on; until then it is never
                // used and points at the rate-limit close.
                None if r == Rejection::TooManyConnections
                    && limits.max_connections_per_user == 0 =>
                {
                    map[r as usize] = map[Rejection::RateLimited as usize];
                }
                None => self.err(
                    Diagnostic::new(
                        "B044",
                        format!("`[close_on]` has no entry for `{}`", r.key()),
                    )
                    .label(raw.name.span(), "in this protocol")
                    .help(format!(
                        "every rejection must name a close entry, e.g. `{} = \"<close name>\"`",
                        r.key()
                    )),
                ),
                Some((_, v)) => {
                    if let Some(id) = self.close_ref(v, &names) {
                        map[r as usize] = id;
                    }
                }
            }
        }

        let error_reply = raw
            .errors
            .as_ref()
            .and_then(|e| e.reply.as_ref())
            .and_then(|r| self.message_ref(r, &names, Direction::Server));

        let mut http = Vec::new();
        let mut http_paths: HashMap<String, Range<usize>> = HashMap::new();
        for h in &raw.http {
            self.ident("http endpoint", &h.name);
            if let Some(ep) = self.http(h, &names, &messages) {
                let key = format!("{:?} {}", ep.method, ep.path.source);
                if let Some(prev) = http_paths.insert(key, h.path.span()) {
                    self.err(
                        Diagnostic::new(
                            "B071",
                            format!("two HTTP endpoints share `{}`", h.path.get_ref()),
                        )
                        .label(h.path.span(), "second")
                        .label(prev, "first")
                        .help("give each method and path one endpoint"),
                    );
                }
                http.push(ep);
            }
        }
        let geo = match &raw.geo {
            Some(g) => self.geo_spec(g, &names, &messages),
            None => GeoSpec::default(),
        };
        // A dispatch path is served before `[[http]]` endpoints; sharing one would hide theirs.
        if let Some(g) = &raw.geo {
            for d in &g.dispatch {
                if let Some(h) = raw
                    .http
                    .iter()
                    .find(|h| h.path.get_ref() == d.path.get_ref())
                {
                    self.err(
                        Diagnostic::new(
                            "B082",
                            format!(
                                "`{}` is both a dispatch and an HTTP endpoint",
                                d.path.get_ref()
                            ),
                        )
                        .label(d.path.span(), "dispatch here")
                        .label(h.path.span(), "HTTP endpoint here")
                        .help("give the dispatch endpoint its own path"),
                    );
                }
            }
        }

        let server_by_wire = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.direction.outbound())
            .map(|(i, m)| (m.wire_type.clone(), i))
            .collect();

        Protocol {
            name: raw.name.get_ref().clone(),
            about,
            limits,
            tokens,
            endpoints,
            messages,
            closes,
            close_on: CloseOn { map },
            error_reply,
            server_by_wire,
            hooks,
            http,
            geo,
            claims_read: std::mem::take(&mut self.claims_read),
        }
    }

    fn hook(
        &mut self,
        name: &S<String>,
        h: &RawHook,
        closes: &HashMap<String, CloseId>,
    ) -> Option<Hook> {
        let about = self.about(&format!("hook `{}`", name.get_ref()), &h.about);
        let path = h.path.get_ref();
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            self.err(
                Diagnostic::new("B070", format!("hook path `{path}` is not an absolute path"))
                    .label(h.path.span(), "expected /path")
                    .help("the path is appended to the deployment's backend URL, e.g. \"/internal/beacon/authorize/\""),
            );
        }
        let timeout_ms = self.limit(&h.timeout_ms, "timeout_ms", 10, 30_000, 2000) as u64;
        let cache_ttl_ms = self.limit(&h.cache_ttl_ms, "cache_ttl_ms", 0, 3_600_000, 0) as u64;
        let unavailable = match closes.get(h.unavailable.get_ref()) {
            Some(&c) => Some(c),
            None => {
                self.err(
                    Diagnostic::new(
                        "B043",
                        format!("no close entry named `{}`", h.unavailable.get_ref()),
                    )
                    .label(h.unavailable.span(), "unknown close")
                    .help(
                        "the close used when the backend cannot answer; declare it under [close]",
                    ),
                );
                None
            }
        };
        Some(Hook {
            name: name.get_ref().clone(),
            about,
            path: path.clone(),
            timeout_ms,
            cache_ttl_ms,
            unavailable: unavailable?,
        })
    }

    fn http(
        &mut self,
        h: &RawHttp,
        names: &Names,
        messages: &[MessageSpec],
    ) -> Option<HttpEndpoint> {
        let about = self.about(&format!("HTTP endpoint `{}`", h.name.get_ref()), &h.about);
        let method = match h.method.get_ref().as_str() {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            other => {
                self.err(
                    Diagnostic::new("B071", format!("unsupported method `{other}`"))
                        .label(h.method.span(), "unsupported")
                        .help("use \"GET\" or \"POST\""),
                );
                HttpMethod::Get
            }
        };
        let path = self.path_pattern(&h.path, &h.params)?;
        if ["/healthz", "/readyz", "/metrics"].contains(&path.source.as_str())
            || path.source.starts_with("/api/publish")
        {
            self.err(
                Diagnostic::new(
                    "B071",
                    format!("`{}` is reserved by the engine", path.source),
                )
                .label(h.path.span(), "reserved")
                .help("choose another path"),
            );
        }
        let param_names: Vec<String> = path.params.iter().map(|p| p.name.clone()).collect();
        let mut tokens = Vec::new();
        for t in &h.tokens {
            match names.tokens.get(t.get_ref()) {
                Some(&id) => tokens.push(id),
                None => self.err(
                    Diagnostic::new("B012", format!("no token kind named `{}`", t.get_ref()))
                        .label(t.span(), "unknown token kind")
                        .help(format!("declare it under `[tokens.{}]`", t.get_ref())),
                ),
            }
        }
        let authenticated = !h.tokens.is_empty();
        self.hooks_allowed = true;
        let mut authorize = Vec::new();
        for r in &h.authorize {
            if let Some(rule) = self.rule(r, &param_names, names, authenticated) {
                authorize.push(rule);
            }
        }
        self.hooks_allowed = false;
        let body = h
            .body
            .as_ref()
            .and_then(|b| self.message_ref(b, names, Direction::Client));
        if body.is_some() && method == HttpMethod::Get {
            self.err(
                Diagnostic::new("B071", "a GET endpoint has no body")
                    .label(h.method.span(), "GET")
                    .help("use POST, or remove `body`"),
            );
        }
        let empty = Schema::default();
        let schema = body.map(|b| &messages[b].schema).unwrap_or(&empty);
        let vars = InboundVars::Schema(schema);
        let rate = h.rate.as_ref().and_then(|r| {
            let ps = *r.per_second.get_ref();
            let burst = *r.burst.get_ref();
            if !(ps > 0.0 && ps <= 1e6 && (1..=1_000_000).contains(&burst)) {
                self.err(
                    Diagnostic::new("B050", "rate is out of range")
                        .label(r.per_second.span(), "per_second must be in (0, 1e6]")
                        .label(r.burst.span(), "burst must be in 1..=1000000")
                        .help(
                            "e.g. `{ per_second = 0.5, burst = 1 }` for one request per 2 seconds",
                        ),
                );
                return None;
            }
            Some(Rate {
                per_second: ps,
                burst: burst as u32,
            })
        });
        if rate.is_some() && !authenticated {
            self.err(
                Diagnostic::new(
                    "B071",
                    "a rate limit per caller needs an authenticated endpoint",
                )
                .label(h.name.span(), "public endpoint")
                .help("declare `tokens`, or remove `rate`"),
            );
        }
        let mint = h.mint.as_ref().and_then(|m| {
            let token = match names.tokens.get(m.token.get_ref()) {
                Some(&t) => t,
                None => {
                    self.err(
                        Diagnostic::new(
                            "B012",
                            format!("no token kind named `{}`", m.token.get_ref()),
                        )
                        .label(m.token.span(), "unknown token kind")
                        .help("mint a token kind declared under [tokens]"),
                    );
                    return None;
                }
            };
            let ttl = *m.ttl_s.get_ref();
            if !(1..=86_400).contains(&ttl) {
                self.err(
                    Diagnostic::new("B050", format!("ttl_s = {ttl} is out of range"))
                        .label(m.ttl_s.span(), "must be 1..=86400")
                        .help("minted tokens are short-lived, e.g. 1800 (30 minutes)"),
                );
            }
            let with = m
                .with
                .as_ref()
                .map(|w| self.object_template(w, &param_names, &vars))
                .unwrap_or_default();
            Some(Mint {
                token,
                ttl_s: ttl.clamp(1, 86_400) as u64,
                with,
            })
        });
        if mint.is_some() && !authenticated {
            self.err(
                Diagnostic::new("B071", "only an authenticated endpoint may mint tokens")
                    .label(h.name.span(), "public endpoint")
                    .help("declare the token kinds callers present in `tokens`"),
            );
        }
        let broadcast = h.broadcast.as_ref().and_then(|a| {
            let send = self.message_ref(&a.send, names, Direction::Server)?;
            let with = a
                .with
                .as_ref()
                .map(|w| self.object_template(w, &param_names, &vars))
                .unwrap_or_default();
            let Some(room) = &a.room else {
                self.err(
                    Diagnostic::new("B071", "an HTTP broadcast needs a `room`")
                        .label(a.send.span(), "no room")
                        .help("e.g. room = \"booking:{path.booking_id}\""),
                );
                return None;
            };
            let room = self.template(room, &param_names, &vars)?;
            if a.exclude_sender.is_some() {
                self.err(
                    Diagnostic::new(
                        "B031",
                        "`exclude_sender` has no meaning on an HTTP endpoint",
                    )
                    .label(a.send.span(), "here")
                    .help("an HTTP caller is not a room member; remove the key"),
                );
            }
            Some(Action {
                send,
                with,
                forward: a.forward.as_ref().map(|f| *f.get_ref()).unwrap_or(false),
                recipients: Recipients::Everyone,
                room: Some(room),
                frame: None,
            })
        });
        self.minted_allowed = mint.is_some();
        let respond = h
            .respond
            .as_ref()
            .map(|w| self.object_template(w, &param_names, &vars))
            .unwrap_or_default();
        self.minted_allowed = false;
        Some(HttpEndpoint {
            name: h.name.get_ref().clone(),
            about,
            method,
            path,
            tokens,
            authorize,
            body,
            rate,
            mint,
            broadcast,
            respond,
        })
    }

    fn limits(&mut self, l: Option<&RawLimits>) -> Limits {
        let none = None;
        let g = |f: fn(&RawLimits) -> &Option<S<i64>>| l.map(f).unwrap_or(&none);
        let max_frame = self.limit(
            g(|l| &l.max_frame_bytes),
            "max_frame_bytes",
            125,
            MAX_BYTES,
            65536,
        );
        let max_msg = self.limit(
            g(|l| &l.max_message_bytes),
            "max_message_bytes",
            125,
            MAX_BYTES,
            65536,
        );
        let lim = Limits {
            max_frame_bytes: max_frame as usize,
            max_message_bytes: max_msg as usize,
            handshake_timeout_ms: self.limit(
                g(|l| &l.handshake_timeout_ms),
                "handshake_timeout_ms",
                100,
                120_000,
                5000,
            ) as u64,
            auth_timeout_ms: self.limit(
                g(|l| &l.auth_timeout_ms),
                "auth_timeout_ms",
                100,
                120_000,
                5000,
            ) as u64,
            idle_timeout_ms: self.limit(
                g(|l| &l.idle_timeout_ms),
                "idle_timeout_ms",
                1000,
                3_600_000,
                90_000,
            ) as u64,
            ping_interval_ms: self.limit(
                g(|l| &l.ping_interval_ms),
                "ping_interval_ms",
                100,
                3_600_000,
                30_000,
            ) as u64,
            queue_max_messages: self.limit(
                g(|l| &l.queue_max_messages),
                "queue_max_messages",
                1,
                1_000_000,
                1024,
            ) as usize,
            queue_max_bytes: self.limit(
                g(|l| &l.queue_max_bytes),
                "queue_max_bytes",
                1024,
                1 << 30,
                1 << 20,
            ) as usize,
            max_errors: self.limit(g(|l| &l.max_errors), "max_errors", 1, 1_000_000, 20) as u32,
            max_connections_per_user: self.limit(
                g(|l| &l.max_connections_per_user),
                "max_connections_per_user",
                0,
                100_000,
                0,
            ) as usize,
        };
        if let Some(l) = l {
            if lim.ping_interval_ms >= lim.idle_timeout_ms {
                if let (Some(p), Some(i)) = (&l.ping_interval_ms, &l.idle_timeout_ms) {
                    self.err(
                        Diagnostic::new("B050", "ping interval must be shorter than the idle timeout")
                            .label(p.span(), "ping interval")
                            .label(i.span(), "idle timeout")
                            .help("a healthy client answers pings; the idle timeout must leave room for at least one"),
                    );
                }
            }
            if lim.max_frame_bytes > lim.max_message_bytes {
                if let Some(f) = &l.max_frame_bytes {
                    self.err(
                        Diagnostic::new("B050", "max_frame_bytes exceeds max_message_bytes")
                            .label(f.span(), "larger than a whole message may be")
                            .help("a frame is part of a message; lower max_frame_bytes or raise max_message_bytes"),
                    );
                }
            }
        }
        lim
    }

    fn close(&mut self, name: &S<String>, c: &RawClose) -> CloseSpec {
        let about = self.about(&format!("close `{}`", name.get_ref()), &c.about);
        let code = match c.code.get_ref() {
            toml::Value::Integer(n) if (4000..=4999).contains(n) => *n as u16,
            toml::Value::Integer(n) => {
                self.err(
                    Diagnostic::new("B040", format!("close code {n} is not an application code"))
                        .label(c.code.span(), "out of range")
                        .help("numeric codes must be 4000-4999; name RFC 6455 codes instead, e.g. \"going_away\" or \"policy_violation\""),
                );
                4000
            }
            toml::Value::String(s) => match rfc_code(s) {
                Some(n) => n,
                None => {
                    self.err(
                        Diagnostic::new("B040", format!("`{s}` is not an RFC 6455 close code name"))
                            .label(c.code.span(), "unknown name")
                            .help("use one of: normal, going_away, policy_violation, internal_error, try_again_later, message_too_big, unsupported_data"),
                    );
                    1000
                }
            },
            _ => {
                self.err(
                    Diagnostic::new(
                        "B040",
                        "close code must be a number (4000-4999) or an RFC code name",
                    )
                    .label(c.code.span(), "wrong type")
                    .help("e.g. `code = 4001` or `code = \"going_away\"`"),
                );
                4000
            }
        };
        let reason = c.reason.get_ref().clone();
        if reason.len() > 123 {
            self.err(
                Diagnostic::new("B041", format!("close reason is {} bytes", reason.len()))
                    .label(c.reason.span(), "longer than 123 bytes")
                    .help("RFC 6455 limits a close frame's reason to 123 bytes of UTF-8"),
            );
        }
        let reconnect = match c.reconnect.get_ref().as_str() {
            "never" => Reconnect::Never,
            "backoff" => Reconnect::Backoff,
            "immediate" => Reconnect::Immediate,
            "after-reauth" => Reconnect::AfterReauth,
            other => {
                self.err(
                    Diagnostic::new("B042", format!("unknown reconnect class `{other}`"))
                        .label(c.reconnect.span(), "unknown class")
                        .help("use one of: never, backoff, immediate, after-reauth"),
                );
                Reconnect::Backoff
            }
        };
        CloseSpec {
            name: name.get_ref().clone(),
            about,
            code,
            reason,
            reconnect,
        }
    }

    fn unique_close_codes(&mut self, raw: &RawProtocol) {
        // Several names may share an RFC code (going away for shutdown and idle), but an app
        // code means one thing: clients switch on it.
        let mut seen: HashMap<i64, Range<usize>> = HashMap::new();
        for c in raw.close.values() {
            if let toml::Value::Integer(n) = c.code.get_ref() {
                if let Some(prev) = seen.insert(*n, c.code.span()) {
                    let same_reason = raw
                        .close
                        .values()
                        .filter(|o| matches!(o.code.get_ref(), toml::Value::Integer(m) if m == n))
                        .map(|o| o.reconnect.get_ref())
                        .collect::<HashSet<_>>()
                        .len()
                        == 1;
                    if !same_reason {
                        self.err(
                            Diagnostic::new("B040", format!("close code {n} is declared twice with different reconnect classes"))
                                .label(c.code.span(), "second declaration")
                                .label(prev, "first declaration")
                                .help("a client decides whether to reconnect from the code alone; give them the same reconnect class or different codes"),
                        );
                    }
                }
            }
        }
    }

    fn close_ref(&mut self, v: &S<String>, names: &Names) -> Option<CloseId> {
        match names.closes.get(v.get_ref()) {
            Some(&id) => Some(id),
            None => {
                let mut known: Vec<&String> = names.closes.keys().collect();
                known.sort();
                self.err(
                    Diagnostic::new("B043", format!("no close entry named `{}`", v.get_ref()))
                        .label(v.span(), "unknown close name")
                        .help(format!(
                            "declare `[close.{}]` or use one of: {}",
                            v.get_ref(),
                            known
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                );
                None
            }
        }
    }

    fn unknown_message(&mut self, name: &S<String>, names: &Names) {
        let mut known: Vec<&String> = names.messages.keys().collect();
        known.sort();
        let close = known
            .iter()
            .find(|k| strsim_close(k, name.get_ref()))
            .map(|k| format!("did you mean `{k}`? "))
            .unwrap_or_default();
        self.err(
            Diagnostic::new("B010", format!("no message named `{}`", name.get_ref()))
                .label(name.span(), "unknown message")
                .help(format!(
                    "{close}declare it under `[messages.{}]`",
                    name.get_ref()
                )),
        );
    }

    fn message_ref(&mut self, name: &S<String>, names: &Names, want: Direction) -> Option<MsgId> {
        match names.messages.get(name.get_ref()) {
            None => {
                self.unknown_message(name, names);
                None
            }
            Some(&(id, dir)) => {
                let ok = match want {
                    Direction::Server => dir.outbound(),
                    Direction::Client => dir.inbound(),
                    Direction::Both => true,
                };
                if !ok {
                    let (need, hint) = match want {
                        Direction::Server => ("server-to-client", "\"server\" or \"both\""),
                        _ => ("client-to-server", "\"client\" or \"both\""),
                    };
                    self.err(
                        Diagnostic::new("B011", format!("`{}` is used as a {need} message but its direction does not allow it", name.get_ref()))
                            .label(name.span(), "wrong direction")
                            .help(format!("set its direction to {hint}")),
                    );
                    None
                } else {
                    Some(id)
                }
            }
        }
    }

    fn token(&mut self, name: &S<String>, t: &RawToken) -> TokenSpec {
        let about = self.about(&format!("token `{}`", name.get_ref()), &t.about);
        let mut algorithms = Vec::new();
        for a in t.algorithms.get_ref() {
            let alg = match a.get_ref().as_str() {
                "HS256" => Some(jsonwebtoken::Algorithm::HS256),
                "HS384" => Some(jsonwebtoken::Algorithm::HS384),
                "HS512" => Some(jsonwebtoken::Algorithm::HS512),
                "RS256" => Some(jsonwebtoken::Algorithm::RS256),
                "ES256" => Some(jsonwebtoken::Algorithm::ES256),
                _ => None,
            };
            match alg {
                Some(alg) => algorithms.push(alg),
                None => self.err(
                    Diagnostic::new(
                        "B013",
                        format!("algorithm `{}` is not allowed", a.get_ref()),
                    )
                    .label(a.span(), "not allowed")
                    .help("use HS256, HS384, HS512, RS256 or ES256; `none` is never accepted"),
                ),
            }
        }
        if t.algorithms.get_ref().is_empty() {
            self.err(
                Diagnostic::new("B013", "no algorithms listed")
                    .label(t.algorithms.span(), "empty list")
                    .help("list the algorithms tokens are signed with, e.g. [\"HS256\"]"),
            );
        }
        let hmac = algorithms.iter().any(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        });
        let public = algorithms.iter().any(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::RS256 | jsonwebtoken::Algorithm::ES256
            )
        });
        let rsa = algorithms.contains(&jsonwebtoken::Algorithm::RS256);
        let ec = algorithms.contains(&jsonwebtoken::Algorithm::ES256);
        if (hmac && public) || (rsa && ec) {
            self.err(
                Diagnostic::new("B013", "algorithms from different key families share one token kind")
                    .label(t.algorithms.span(), "mixed key families")
                    .help("one key verifies one family (HMAC, RSA or EC); mixing them invites key-confusion attacks. Declare separate token kinds"),
            );
        }
        let leeway = match &t.leeway_s {
            Some(l) if !(0..=300).contains(l.get_ref()) => {
                self.err(
                    Diagnostic::new("B050", "leeway_s must be between 0 and 300")
                        .label(l.span(), "out of range")
                        .help("leeway tolerates clock skew; more than a few seconds lets expired tokens in"),
                );
                0
            }
            Some(l) => *l.get_ref() as u64,
            None => 0,
        };
        let mut exact_claims = Vec::new();
        for (k, v) in &t.claims {
            match toml_to_json(v.get_ref()) {
                Some(j) => exact_claims.push((k.get_ref().clone(), j)),
                None => self.err(
                    Diagnostic::new("B001", "claim values must be strings, numbers or booleans")
                        .label(v.span(), "unsupported value")
                        .help("e.g. `claims = { token_type = \"access\" }`"),
                ),
            }
        }
        TokenSpec {
            name: name.get_ref().clone(),
            about,
            key: t.key.get_ref().clone(),
            key_span: t.key.span(),
            algorithms,
            user_id_claim: t
                .user_id_claim
                .as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_else(|| "sub".into()),
            required_claims: t
                .required_claims
                .iter()
                .map(|c| c.get_ref().clone())
                .collect(),
            exact_claims,
            issuer: t.issuer.as_ref().map(|s| s.get_ref().clone()),
            audience: t.audience.as_ref().map(|s| s.get_ref().clone()),
            leeway_s: leeway,
        }
    }

    fn message(&mut self, name: &S<String>, m: &RawMessage, names: &Names) -> MessageSpec {
        let about = self.about(&format!("message `{}`", name.get_ref()), &m.about);
        let direction = names.messages[name.get_ref()].1;
        let schema = self.schema(&m.fields, 0);
        let inbound_vars = InboundVars::Schema(&schema);
        let action = |v: &mut Self, a: &Option<RawAction>, kind: &str| -> Option<Action> {
            let a = a.as_ref()?;
            if !direction.inbound() {
                v.err(
                    Diagnostic::new("B031", format!("server message `{}` cannot have a `{kind}` action", name.get_ref()))
                        .label(a.send.span(), "action on a server message")
                        .help("actions run when a client sends the message; set direction to \"client\" or \"both\""),
                );
            }
            let send = v.message_ref(&a.send, names, Direction::Server)?;
            let with = a
                .with
                .as_ref()
                .map(|w| v.object_template(w, &[], &inbound_vars))
                .unwrap_or_default();
            let room = a
                .room
                .as_ref()
                .map(|r| v.template(r, &[], &InboundVars::Schema(&schema)));
            if kind == "reply" {
                if let Some(ex) = &a.exclude_sender {
                    v.err(
                        Diagnostic::new("B031", "`exclude_sender` has no meaning on a reply")
                            .label(ex.span(), "here")
                            .help("a reply goes to the sender only; remove this key"),
                    );
                }
                if let Some(r) = &a.room {
                    v.err(
                        Diagnostic::new("B031", "`room` has no meaning on a reply")
                            .label(r.span(), "here")
                            .help(
                                "a reply goes to the sender only; use `broadcast` to reach a room",
                            ),
                    );
                }
            }
            Some(Action {
                send,
                with,
                forward: a.forward.as_ref().map(|f| *f.get_ref()).unwrap_or(false),
                recipients: if a
                    .exclude_sender
                    .as_ref()
                    .map(|e| *e.get_ref())
                    .unwrap_or(false)
                {
                    Recipients::ExcludeSender
                } else {
                    Recipients::Everyone
                },
                room: room.flatten(),
                frame: None,
            })
        };
        let reply = action(self, &m.reply, "reply");
        let broadcast = action(self, &m.broadcast, "broadcast");
        let (geo_provider, geo_search, geo_respond) =
            self.geo_actions(name, m, &schema, names, direction);
        for f in &m.ignore_if_empty {
            if !schema
                .fields
                .iter()
                .any(|s| &s.name == f.get_ref() && s.ty == FieldType::String)
            {
                self.err(
                    Diagnostic::new("B030", format!("`{}` is not a declared string field", f.get_ref()))
                        .label(f.span(), "not a string field of this message")
                        .help("ignore_if_empty lists string fields; declare the field with type = \"string\""),
                );
            }
        }
        let only_if: Vec<Cond> = m
            .only_if
            .iter()
            .filter_map(|c| self.cond(c, &[], true))
            .collect();
        if !only_if.is_empty() && !direction.inbound() {
            self.err(
                Diagnostic::new(
                    "B031",
                    format!("server message `{}` cannot have `only_if`", name.get_ref()),
                )
                .label(name.span(), "server message")
                .help("only_if drops client messages from callers who fail it"),
            );
        }
        let filter = m.filter.as_ref().map(|f| {
            let ok = schema.fields.iter().any(|s| {
                &s.name == f.values_from.get_ref()
                    && s.ty == FieldType::Array
                    && s.items == Some(FieldType::String)
            });
            if !ok {
                self.err(
                    Diagnostic::new(
                        "B072",
                        format!(
                            "`{}` is not a declared array of strings",
                            f.values_from.get_ref()
                        ),
                    )
                    .label(f.values_from.span(), "not an array field of this message")
                    .help(
                        "declare it, e.g. fields.types = { type = \"array\", items = \"string\" }",
                    ),
                );
            }
            let mut applies_to = Vec::new();
            for a in &f.applies_to {
                match names.messages.get(a.get_ref()) {
                    Some(&(_, d)) if d.outbound() => applies_to.push(a.get_ref().clone()),
                    Some(_) => self.err(
                        Diagnostic::new(
                            "B072",
                            format!("`{}` is not a server message", a.get_ref()),
                        )
                        .label(a.span(), "clients send this")
                        .help("filters select messages the server sends"),
                    ),
                    None => self.unknown_message(a, names),
                }
            }
            if applies_to.is_empty() {
                self.err(
                    Diagnostic::new("B072", "a filter applies to no message")
                        .label(f.field.span(), "in this filter")
                        .help("list server messages in `applies_to`"),
                );
            }
            FilterSpec {
                field: f.field.get_ref().clone(),
                values_from: f.values_from.get_ref().clone(),
                applies_to,
            }
        });
        MessageSpec {
            only_if,
            filter,
            name: name.get_ref().clone(),
            about,
            direction,
            wire_type: m
                .wire_type
                .as_ref()
                .map(|w| w.get_ref().clone())
                .unwrap_or_else(|| name.get_ref().clone()),
            schema,
            reply,
            broadcast,
            ignore_if_empty: m
                .ignore_if_empty
                .iter()
                .map(|f| f.get_ref().clone())
                .collect(),
            rate: None,
            geo_provider,
            geo_search,
            geo_respond,
        }
    }

    fn field_type(&mut self, ty: &S<String>) -> FieldType {
        match ty.get_ref().as_str() {
            "string" => FieldType::String,
            "int" => FieldType::Int,
            "number" => FieldType::Number,
            "bool" => FieldType::Bool,
            "object" => FieldType::Object,
            "array" => FieldType::Array,
            "id" => FieldType::Id,
            "any" => FieldType::Any,
            other => {
                self.err(
                    Diagnostic::new("B030", format!("unknown field type `{other}`"))
                        .label(ty.span(), "unknown type")
                        .help("use one of: string, int, number, bool, object, array, id, any"),
                );
                FieldType::Any
            }
        }
    }

    fn schema(
        &mut self,
        fields: &std::collections::BTreeMap<S<String>, RawField>,
        depth: usize,
    ) -> Schema {
        let mut out = Vec::new();
        for (name, f) in fields {
            if name.get_ref().is_empty() || name.get_ref().len() > 64 {
                self.err(
                    Diagnostic::new("B030", "field names must be 1 to 64 bytes")
                        .label(name.span(), "bad field name")
                        .help("rename the field"),
                );
            }
            let ty = self.field_type(&f.ty);
            let enum_values: Vec<String> = f
                .enum_
                .as_ref()
                .map(|e| e.get_ref().iter().map(|s| s.get_ref().clone()).collect())
                .unwrap_or_default();
            if let Some(e) = &f.enum_ {
                if ty != FieldType::String {
                    self.err(
                        Diagnostic::new("B030", "`enum` applies to string fields only")
                            .label(e.span(), "enum on a non-string field")
                            .help("set type = \"string\" or remove the enum"),
                    );
                }
                if e.get_ref().is_empty() {
                    self.err(
                        Diagnostic::new("B030", "`enum` is empty")
                            .label(e.span(), "no allowed values")
                            .help("list the allowed values"),
                    );
                }
            }
            for (bound, val) in [("min", &f.min), ("max", &f.max)] {
                if let Some(b) = val {
                    if !matches!(ty, FieldType::Int | FieldType::Number) || !b.get_ref().is_finite()
                    {
                        self.err(
                            Diagnostic::new(
                                "B030",
                                format!(
                                    "`{bound}` applies to finite bounds on int or number fields"
                                ),
                            )
                            .label(b.span(), "misplaced bound")
                            .help("set type = \"number\" or \"int\", or remove the bound"),
                        );
                    }
                }
            }
            if let (Some(lo), Some(hi)) = (&f.min, &f.max) {
                if lo.get_ref() > hi.get_ref() {
                    self.err(
                        Diagnostic::new("B030", "`min` is greater than `max`")
                            .label(lo.span(), "min")
                            .label(hi.span(), "max")
                            .help("swap the bounds"),
                    );
                }
            }
            let max_length = match &f.max_length {
                Some(m)
                    if *m.get_ref() < 1 || !matches!(ty, FieldType::String | FieldType::Array) =>
                {
                    self.err(
                        Diagnostic::new(
                            "B030",
                            "`max_length` must be positive and applies to strings and arrays",
                        )
                        .label(m.span(), "misplaced or non-positive")
                        .help("strings count bytes, arrays count items"),
                    );
                    None
                }
                Some(m) => Some(*m.get_ref() as usize),
                None => None,
            };
            let items = f.items.as_ref().map(|i| {
                if ty != FieldType::Array {
                    self.err(
                        Diagnostic::new("B030", "`items` applies to array fields only")
                            .label(i.span(), "items on a non-array")
                            .help("set type = \"array\" or remove `items`"),
                    );
                }
                self.field_type(i)
            });
            let nested = f.fields.as_ref().map(|n| {
                if ty != FieldType::Object {
                    self.err(
                        Diagnostic::new("B030", "nested `fields` apply to object fields only")
                            .label(f.ty.span(), "not an object")
                            .help("set type = \"object\""),
                    );
                }
                if depth >= 4 {
                    self.err(
                        Diagnostic::new("B030", "objects nest at most 4 levels deep")
                            .label(f.ty.span(), "too deep")
                            .help("flatten the schema"),
                    );
                }
                self.schema(n, depth + 1)
            });
            out.push(FieldSpec {
                name: name.get_ref().clone(),
                ty,
                required: f.required.as_ref().map(|r| *r.get_ref()).unwrap_or(true),
                enum_values,
                min: f.min.as_ref().map(|m| *m.get_ref()),
                max: f.max.as_ref().map(|m| *m.get_ref()),
                max_length,
                items,
                nested,
            });
        }
        Schema { fields: out }
    }

    fn endpoint(
        &mut self,
        e: &RawEndpoint,
        names: &Names,
        messages: &[MessageSpec],
    ) -> Option<Endpoint> {
        let about = self.about(&format!("endpoint `{}`", e.name.get_ref()), &e.about);
        let path = self.path_pattern(&e.path, &e.params)?;
        let param_names: Vec<String> = path.params.iter().map(|p| p.name.clone()).collect();
        let mut tokens = Vec::new();
        for t in &e.tokens {
            match names.tokens.get(t.get_ref()) {
                Some(&id) => tokens.push(id),
                None => self.err(
                    Diagnostic::new("B012", format!("no token kind named `{}`", t.get_ref()))
                        .label(t.span(), "unknown token kind")
                        .help(format!("declare it under `[tokens.{}]`", t.get_ref())),
                ),
            }
        }
        let mut token_sources = Vec::new();
        for s in &e.token_sources {
            let src = s.get_ref();
            let parsed = if let Some(q) = src.strip_prefix("query:") {
                (!q.is_empty()).then(|| TokenSource::Query(q.to_owned()))
            } else if src == "header:authorization" {
                Some(TokenSource::Bearer)
            } else if let Some(m) = src.strip_prefix("subprotocol:") {
                (!m.is_empty()).then(|| TokenSource::Subprotocol(m.to_owned()))
            } else if let Some(m) = src.strip_prefix("message:") {
                (!m.is_empty()).then(|| TokenSource::FirstMessage(m.to_owned()))
            } else {
                None
            };
            match parsed {
                Some(p) => token_sources.push(p),
                None => self.err(
                    Diagnostic::new("B014", format!("unknown token source `{src}`"))
                        .label(s.span(), "unknown source")
                        .help("use \"query:<name>\", \"header:authorization\", \"subprotocol:<marker>\" or \"message:<type>\""),
                ),
            }
        }
        if tokens.is_empty() != token_sources.is_empty() {
            let span = e
                .tokens
                .first()
                .map(|t| t.span())
                .or(e.token_sources.first().map(|t| t.span()))
                .unwrap_or(e.name.span());
            self.err(
                Diagnostic::new("B014", "`tokens` and `token_sources` must both be set or both be empty")
                    .label(span, "only one is set")
                    .help("an endpoint either authenticates (token kinds and where to find them) or is public"),
            );
        }
        let authenticated = !tokens.is_empty();
        let room = self.template(&e.room, &param_names, &InboundVars::None)?;
        if !authenticated
            && room
                .pieces
                .iter()
                .any(|p| matches!(p, Piece::Var(Var::UserId | Var::Claim(_))))
        {
            self.err(
                Diagnostic::new(
                    "B021",
                    "the room uses the caller's identity but the endpoint is public",
                )
                .label(e.room.span(), "needs a token")
                .help(
                    "declare `tokens` and `token_sources`, or build the room from path parameters",
                ),
            );
        }
        let mut inbound = Vec::new();
        let mut inbound_by_wire = HashMap::new();
        for m in &e.inbound {
            if let Some(id) = self.message_ref(m, names, Direction::Client) {
                inbound.push(id);
                inbound_by_wire.insert(messages[id].wire_type.clone(), id);
            }
        }
        let mut outbound = Vec::new();
        for m in &e.outbound {
            if let Some(id) = self.message_ref(m, names, Direction::Server) {
                outbound.push(id);
            }
        }
        let mut on_connect = Vec::new();
        for s in &e.on_connect {
            if let Some(send) = self.message_ref(&s.send, names, Direction::Server) {
                let with = s
                    .with
                    .as_ref()
                    .map(|w| self.object_template(w, &param_names, &InboundVars::None))
                    .unwrap_or_default();
                on_connect.push(SendSpec { send, with });
            }
        }
        let mut authorize = Vec::new();
        self.hooks_allowed = true;
        for r in &e.authorize {
            if let Some(rule) = self.rule(r, &param_names, names, authenticated) {
                authorize.push(rule);
            }
        }
        self.hooks_allowed = false;
        let missing_params = e.missing_params.as_ref().and_then(|m| {
            if path.params.is_empty() {
                self.err(
                    Diagnostic::new("B022", "`missing_params` on a path without parameters")
                        .label(m.span(), "never used")
                        .help("remove the key"),
                );
            }
            self.close_ref(m, names)
        });
        let presence = |v: &mut Self, list: &[RawSend]| -> Vec<SendSpec> {
            list.iter()
                .filter_map(|s| {
                    let send = v.message_ref(&s.send, names, Direction::Server)?;
                    let with = s
                        .with
                        .as_ref()
                        .map(|w| v.object_template(w, &param_names, &InboundVars::None))
                        .unwrap_or_default();
                    Some(SendSpec { send, with })
                })
                .collect()
        };
        let on_join = presence(self, &e.on_join);
        let on_leave = presence(self, &e.on_leave);
        let origins = e.origins.as_ref().map(|os| {
            os.iter()
                .filter_map(|o| {
                    let s = o.get_ref();
                    let ok = (s.starts_with("http://") || s.starts_with("https://"))
                        && !s.trim_start_matches("https://").trim_start_matches("http://").contains('/');
                    if ok {
                        Some(s.to_ascii_lowercase())
                    } else {
                        self.err(
                            Diagnostic::new("B022", format!("`{s}` is not an origin"))
                                .label(o.span(), "not scheme://host[:port]")
                                .help("an origin is a scheme, host and optional port with no path, e.g. \"https://app.example.com\""),
                        );
                        None
                    }
                })
                .collect()
        });
        let untyped_inbound = e.untyped_inbound.as_ref().and_then(|u| {
            let id = self.message_ref(u, names, Direction::Client)?;
            if !inbound.contains(&id) {
                self.err(
                    Diagnostic::new(
                        "B010",
                        format!("`{}` is not in this endpoint's inbound list", u.get_ref()),
                    )
                    .label(u.span(), "not accepted here")
                    .help("add it to `inbound`"),
                );
            }
            Some(id)
        });
        let echo = e.echo.as_ref().map(|x| *x.get_ref()).unwrap_or(false);
        let refresh = e.refresh.as_ref().and_then(|r| {
            if !authenticated {
                self.err(
                    Diagnostic::new("B014", "`refresh` on an endpoint without tokens")
                        .label(r.span(), "nothing to refresh")
                        .help("declare `tokens` and `token_sources`, or remove `refresh`"),
                );
                return None;
            }
            if inbound_by_wire.contains_key(r.get_ref()) {
                self.err(
                    Diagnostic::new("B014", format!("`refresh = \"{}\"` collides with an inbound message", r.get_ref()))
                        .label(r.span(), "ambiguous")
                        .help("the refresh message is handled by the engine; do not declare it as an inbound message"),
                );
                return None;
            }
            Some(r.get_ref().clone())
        });
        if echo && !inbound.is_empty() {
            self.err(
                Diagnostic::new("B031", "an echo endpoint cannot declare inbound messages")
                    .label(e.name.span(), "echo endpoint")
                    .help(
                        "echo endpoints return every message unchanged; remove `inbound` or `echo`",
                    ),
            );
        }
        for src in &token_sources {
            if let TokenSource::FirstMessage(wire) = src {
                if inbound_by_wire.contains_key(wire) {
                    self.err(
                        Diagnostic::new("B014", format!("`message:{wire}` collides with an inbound message of the same type"))
                            .label(e.token_sources.iter().find(|s| s.get_ref().ends_with(wire.as_str())).map(|s| s.span()).unwrap_or(e.name.span()), "ambiguous")
                            .help("the authentication message is handled by the engine; do not declare it as an inbound message"),
                    );
                }
            }
        }
        Some(Endpoint {
            name: e.name.get_ref().clone(),
            about,
            path,
            tokens,
            token_sources,
            room,
            inbound,
            outbound,
            on_connect,
            authorize,
            origins,
            type_field: e
                .type_field
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_else(|| "type".into()),
            untyped_inbound,
            inbound_by_wire,
            echo,
            refresh,
            missing_params,
            on_join,
            on_leave,
        })
    }

    fn path_pattern(
        &mut self,
        path: &S<String>,
        declared: &std::collections::BTreeMap<S<String>, RawParam>,
    ) -> Option<PathPattern> {
        let src = path.get_ref();
        let bad = |v: &mut Self, why: &str| {
            v.err(
                Diagnostic::new("B020", format!("invalid path pattern: {why}"))
                    .label(path.span(), why.to_owned())
                    .help("paths look like \"/ws/bookings/{booking_id}/\": literal segments and whole-segment {parameters}"),
            );
        };
        if !src.starts_with('/') || src.contains('?') || src.contains("//") {
            bad(
                self,
                "must start with `/` and contain no `?` or empty segments",
            );
            return None;
        }
        let trailing_slash = src.len() > 1 && src.ends_with('/');
        let body = src.trim_start_matches('/').trim_end_matches('/');
        let mut segments = Vec::new();
        let mut params = Vec::new();
        let mut ok = true;
        for seg in body.split('/').filter(|s| !s.is_empty()) {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if !is_ident(inner) {
                    bad(self, "parameter names are lowercase identifiers");
                    ok = false;
                    continue;
                }
                if params.iter().any(|p: &ParamSpec| p.name == inner) {
                    bad(self, "a parameter appears twice");
                    ok = false;
                    continue;
                }
                let decl = declared.iter().find(|(k, _)| k.get_ref() == inner);
                let (ty, max_length) = match decl {
                    None => (ParamType::String, 128),
                    Some((_, p)) => {
                        let ty = match p.ty.get_ref().as_str() {
                            "string" => ParamType::String,
                            "int" => ParamType::Int,
                            other => {
                                self.err(
                                    Diagnostic::new(
                                        "B022",
                                        format!("unknown parameter type `{other}`"),
                                    )
                                    .label(p.ty.span(), "unknown type")
                                    .help("use \"string\" or \"int\""),
                                );
                                ParamType::String
                            }
                        };
                        let ml = match &p.max_length {
                            Some(m) if !(1..=1024).contains(m.get_ref()) => {
                                self.err(
                                    Diagnostic::new("B022", "parameter max_length must be 1-1024")
                                        .label(m.span(), "out of range")
                                        .help("path parameters are short identifiers"),
                                );
                                128
                            }
                            Some(m) => *m.get_ref() as usize,
                            None => 128,
                        };
                        (ty, ml)
                    }
                };
                segments.push(Segment::Param(params.len()));
                params.push(ParamSpec {
                    name: inner.to_owned(),
                    ty,
                    max_length,
                });
            } else if seg.contains('{') || seg.contains('}') {
                bad(self, "a parameter must be a whole segment");
                ok = false;
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        for k in declared.keys() {
            if !params.iter().any(|p| &p.name == k.get_ref()) {
                self.err(
                    Diagnostic::new(
                        "B022",
                        format!("parameter `{}` does not appear in the path", k.get_ref()),
                    )
                    .label(k.span(), "not in the path")
                    .help(format!(
                        "add `{{{}}}` to the path or remove this entry",
                        k.get_ref()
                    )),
                );
            }
        }
        ok.then_some(PathPattern {
            source: src.clone(),
            segments,
            params,
            trailing_slash,
        })
    }

    fn var(
        &mut self,
        name: &str,
        span: Range<usize>,
        params: &[String],
        inbound: &InboundVars,
    ) -> Option<Var> {
        if name.contains('|') {
            // `{a|b}`: the first of the alternatives that has a value.
            let alts: Vec<Option<Var>> = name
                .split('|')
                .map(|n| self.var(n, span.clone(), params, inbound))
                .collect();
            return alts.into_iter().collect::<Option<Vec<Var>>>().map(Var::Or);
        }
        if let Some(d) = self.geo_scope_refuses(name, &span) {
            self.err(d);
            return None;
        }
        let var = if let Some(g) = name.strip_prefix("geo.") {
            if self.geo_scope == GeoScope::Off {
                None
            } else {
                GeoVar::ALL
                    .iter()
                    .find(|(n, _)| *n == g)
                    .map(|(_, v)| Var::Geo(*v))
            }
        } else if let Some(p) = name.strip_prefix("path.") {
            params.iter().position(|x| x == p).map(Var::Path)
        } else if let Some(c) = name.strip_prefix("claims.") {
            (!c.is_empty()).then(|| {
                self.claims_read.insert(c.to_owned());
                Var::Claim(c.to_owned())
            })
        } else if name == "user.id" {
            Some(Var::UserId)
        } else if let Some(f) = name.strip_prefix("in.") {
            let path: Vec<String> = f.split('.').map(str::to_owned).collect();
            match inbound {
                InboundVars::None => None,
                InboundVars::Schema(s) => schema_has(s, &path).then_some(Var::In(path)),
            }
        } else {
            match name {
                "gen.id" => Some(Var::GenId),
                "now.iso" => Some(Var::NowIso),
                "now.ms" => Some(Var::NowMs),
                "minted" if self.minted_allowed => Some(Var::Minted),
                _ => None,
            }
        };
        if var.is_none() {
            let mut avail: Vec<String> = params.iter().map(|p| format!("path.{p}")).collect();
            avail.extend(
                ["user.id", "claims.<name>", "gen.id", "now.iso", "now.ms"].map(String::from),
            );
            if matches!(inbound, InboundVars::Schema(_)) {
                avail.push("in.<declared field>".into());
            }
            if self.geo_scope != GeoScope::Off {
                avail.extend(GeoVar::ALL.iter().map(|(n, _)| format!("geo.{n}")));
            }
            self.err(
                Diagnostic::new("B021", format!("unknown template variable `{{{name}}}`"))
                    .label(span, "unknown variable")
                    .help(format!("available here: {}", avail.join(", "))),
            );
        }
        var
    }

    fn template(
        &mut self,
        s: &S<String>,
        params: &[String],
        inbound: &InboundVars,
    ) -> Option<Template> {
        parse_template(s.get_ref())
            .map_err(|why| {
                self.err(
                    Diagnostic::new("B021", format!("invalid template: {why}"))
                        .label(s.span(), why)
                        .help("templates are text with {variables}, e.g. \"booking:{path.booking_id}\"; write {{ for a literal brace"),
                );
            })
            .ok()
            .and_then(|raw| {
                let mut pieces = Vec::new();
                let mut ok = true;
                for p in raw {
                    match p {
                        RawPiece::Text(t) => pieces.push(Piece::Text(t)),
                        RawPiece::Var(v) => match self.var(&v, s.span(), params, inbound) {
                            Some(v) => pieces.push(Piece::Var(v)),
                            None => ok = false,
                        },
                    }
                }
                ok.then(|| Template {
                    source: s.get_ref().clone(),
                    pieces,
                })
            })
    }

    fn object_template(
        &mut self,
        t: &S<toml::Table>,
        params: &[String],
        inbound: &InboundVars,
    ) -> Vec<(String, ValueTemplate)> {
        let span = t.span();
        t.get_ref()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    self.value_template(v, span.clone(), params, inbound),
                )
            })
            .collect()
    }

    fn value_template(
        &mut self,
        v: &toml::Value,
        span: Range<usize>,
        params: &[String],
        inbound: &InboundVars,
    ) -> ValueTemplate {
        match v {
            toml::Value::String(s) => {
                // `{var|string}`: the value as text even when the variable is a number.
                let as_text = s.contains("|string}");
                let spanned = S::new(span.clone(), s.replace("|string}", "}"));
                match self.template(&spanned, params, inbound) {
                    Some(t) if as_text => ValueTemplate::Interp(t),
                    Some(t) => match t.pieces.as_slice() {
                        [Piece::Var(v)] => ValueTemplate::Whole(v.clone()),
                        [] => ValueTemplate::Literal(Value::String(String::new())),
                        [Piece::Text(t)] => ValueTemplate::Literal(Value::String(t.clone())),
                        _ => ValueTemplate::Interp(t),
                    },
                    None => ValueTemplate::Literal(Value::Null),
                }
            }
            toml::Value::Table(t) => ValueTemplate::Object(
                t.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            self.value_template(v, span.clone(), params, inbound),
                        )
                    })
                    .collect(),
            ),
            toml::Value::Array(a) => ValueTemplate::Array(
                a.iter()
                    .map(|v| self.value_template(v, span.clone(), params, inbound))
                    .collect(),
            ),
            other => ValueTemplate::Literal(toml_to_json(other).unwrap_or(Value::Null)),
        }
    }

    fn rule(
        &mut self,
        r: &RawRule,
        params: &[String],
        names: &Names,
        authenticated: bool,
    ) -> Option<Rule> {
        let deny = self.close_ref(&r.deny, names);
        let cond = match (r.any_of.is_empty(), r.all_of.is_empty()) {
            (false, true) => Cond::AnyOf(
                r.any_of
                    .iter()
                    .filter_map(|c| self.cond(c, params, authenticated))
                    .collect(),
            ),
            (true, false) => Cond::AllOf(
                r.all_of
                    .iter()
                    .filter_map(|c| self.cond(c, params, authenticated))
                    .collect(),
            ),
            _ => {
                self.err(
                    Diagnostic::new(
                        "B060",
                        "a rule needs exactly one of `any_of` or `all_of`, non-empty",
                    )
                    .label(r.deny.span(), "in this rule")
                    .help("e.g. any_of = [{ claim = \"role\", in = [\"admin\"] }]"),
                );
                return None;
            }
        };
        Some(Rule { cond, deny: deny? })
    }

    fn cond(&mut self, c: &RawCond, params: &[String], authenticated: bool) -> Option<Cond> {
        let mut kinds = Vec::new();
        if c.authenticated.is_some() {
            kinds.push("authenticated");
        }
        if c.claim.is_some() {
            kinds.push("claim");
        }
        if c.all_of.is_some() {
            kinds.push("all_of");
        }
        if c.any_of.is_some() {
            kinds.push("any_of");
        }
        if c.hook.is_some() {
            kinds.push("hook");
        }
        let span = c
            .claim
            .as_ref()
            .map(|s| s.span())
            .or(c.hook.as_ref().map(|s| s.span()))
            .or(c.authenticated.as_ref().map(|s| s.span()))
            .or(c.all_of.as_ref().map(|s| s.span()))
            .or(c.any_of.as_ref().map(|s| s.span()))
            .unwrap_or(0..0);
        if kinds.len() != 1 {
            self.err(
                Diagnostic::new(
                    "B060",
                    "a condition needs exactly one of `claim`, `authenticated`, `hook`, `all_of`, `any_of`",
                )
                .label(span, "ambiguous or empty condition")
                .help("split it into separate conditions"),
            );
            return None;
        }
        if !authenticated && kinds[0] != "all_of" && kinds[0] != "any_of" {
            self.err(
                Diagnostic::new("B060", "authorization rules on a public endpoint")
                    .label(span, "there is no caller identity here")
                    .help("declare `tokens` and `token_sources` on the endpoint"),
            );
            return None;
        }
        if let Some(a) = &c.authenticated {
            if !*a.get_ref() {
                self.err(
                    Diagnostic::new("B060", "`authenticated = false` never admits anyone")
                        .label(a.span(), "always false")
                        .help("use `authenticated = true`, or remove the condition"),
                );
                return None;
            }
            return Some(Cond::Authenticated);
        }
        if let Some(h) = &c.hook {
            if !self.hooks_allowed {
                self.err(
                    Diagnostic::new("B070", "a hook cannot be asked here")
                        .label(h.span(), "per-message condition")
                        .help("hooks run at the handshake (endpoint `authorize`) and on HTTP endpoints; use claim conditions here"),
                );
                return None;
            }
            return match self.hook_names.get(h.get_ref()) {
                Some(&id) => Some(Cond::Hook(id)),
                None => {
                    self.err(
                        Diagnostic::new("B070", format!("no hook named `{}`", h.get_ref()))
                            .label(h.span(), "unknown hook")
                            .help(format!("declare it under `[hooks.{}]`", h.get_ref())),
                    );
                    None
                }
            };
        }
        if let Some(list) = &c.all_of {
            return Some(Cond::AllOf(
                list.get_ref()
                    .iter()
                    .filter_map(|c| self.cond(c, params, authenticated))
                    .collect(),
            ));
        }
        if let Some(list) = &c.any_of {
            return Some(Cond::AnyOf(
                list.get_ref()
                    .iter()
                    .filter_map(|c| self.cond(c, params, authenticated))
                    .collect(),
            ));
        }
        let claim = c.claim.as_ref()?.get_ref().clone();
        self.claims_read.insert(claim.clone());
        let tests = [
            c.equals.is_some(),
            c.in_.is_some(),
            c.equals_param.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if tests != 1 {
            self.err(
                Diagnostic::new(
                    "B060",
                    "a claim condition needs exactly one of `equals`, `in`, `equals_param`",
                )
                .label(span, "in this condition")
                .help("e.g. { claim = \"role\", in = [\"admin\", \"staff\"] }"),
            );
            return None;
        }
        if let Some(eq) = &c.equals {
            return match toml_to_json(eq.get_ref()) {
                Some(v) => Some(Cond::ClaimEquals(claim, v)),
                None => {
                    self.err(
                        Diagnostic::new(
                            "B060",
                            "claim values must be strings, numbers or booleans",
                        )
                        .label(eq.span(), "unsupported value")
                        .help("compare against a scalar"),
                    );
                    None
                }
            };
        }
        if let Some(list) = &c.in_ {
            let vals: Option<Vec<Value>> = list.get_ref().iter().map(toml_to_json).collect();
            return match vals {
                Some(v) if !v.is_empty() => Some(Cond::ClaimIn(claim, v)),
                _ => {
                    self.err(
                        Diagnostic::new("B060", "`in` needs a non-empty list of scalars")
                            .label(list.span(), "bad list")
                            .help("e.g. in = [\"admin\", \"staff\"]"),
                    );
                    None
                }
            };
        }
        let p = c.equals_param.as_ref()?;
        match params.iter().position(|x| x == p.get_ref()) {
            Some(i) => Some(Cond::ClaimEqualsParam(claim, i)),
            None => {
                self.err(
                    Diagnostic::new(
                        "B060",
                        format!(
                            "`{}` is not a parameter of this endpoint's path",
                            p.get_ref()
                        ),
                    )
                    .label(p.span(), "unknown parameter")
                    .help(format!("parameters here: {}", params.join(", "))),
                );
                None
            }
        }
    }
}

enum InboundVars<'a> {
    None,
    Schema(&'a Schema),
}

fn schema_has(s: &Schema, path: &[String]) -> bool {
    match path.split_first() {
        None => false,
        Some((head, rest)) => s.fields.iter().any(|f| {
            &f.name == head
                && (rest.is_empty()
                    || f.nested
                        .as_ref()
                        .map(|n| schema_has(n, rest))
                        .unwrap_or(false)
                    || (f.ty == FieldType::Object && f.nested.is_none())
                    || f.ty == FieldType::Any)
        }),
    }
}

enum RawPiece {
    Text(String),
    Var(String),
}

fn parse_template(s: &str) -> Result<Vec<RawPiece>, &'static str> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c)
                            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '|' =>
                        {
                            name.push(c)
                        }
                        Some(_) => return Err("variable names use letters, digits, `_` and `.`"),
                        None => return Err("unclosed `{`"),
                    }
                }
                if name.is_empty() {
                    return Err("empty `{}`");
                }
                if !text.is_empty() {
                    out.push(RawPiece::Text(std::mem::take(&mut text)));
                }
                out.push(RawPiece::Var(name));
            }
            '}' => return Err("unmatched `}`"),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(RawPiece::Text(text));
    }
    Ok(out)
}

fn rfc_code(name: &str) -> Option<u16> {
    Some(match name {
        "normal" => 1000,
        "going_away" => 1001,
        "protocol_error" => 1002,
        "unsupported_data" => 1003,
        "invalid_payload" => 1007,
        "policy_violation" => 1008,
        "message_too_big" => 1009,
        "internal_error" => 1011,
        "service_restart" => 1012,
        "try_again_later" => 1013,
        _ => return None,
    })
}

fn toml_to_json(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number)?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        _ => return None,
    })
}

fn strsim_close(a: &str, b: &str) -> bool {
    // Cheap "did you mean": same length ±1 and at most two differing positions.
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let diff = a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len());
    diff <= 2
}
