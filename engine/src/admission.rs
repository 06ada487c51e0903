//! Admission of a WebSocket upgrade as decisions, with no I/O and no clock: which endpoint the
//! path opens, where its token comes from, whether the token verifies, which home room the
//! socket joins, and how each refusal is answered. The accepting shard (`runtime/front.rs`)
//! carries the steps out in order and does only what needs the world: reading a first-message
//! token off the socket, asking the backend's hooks, taking connection slots.
//!
//! A refusal is answered one of two ways ([`Answer`]): before the upgrade with an HTTP status,
//! or, once the path has named an endpoint, by completing the upgrade and closing at once with
//! the protocol's declared close: browsers cannot read an HTTP status from a failed upgrade,
//! but they do see a close code.

use crate::auth::{self, Identity, Verifier};
use crate::history::store::Since;
use crate::message::RenderCtx;
use crate::protocol::{
    CloseId, Endpoint, ParamError, Protocol, Rejection, ResumeSpec, TokenSource,
};
use crate::ws::handshake::UpgradeRequest;
use crate::ws::http::RequestHead;
use crate::ws::http_error::{HttpError, HttpErrorKind};

/// Why an upgrade was refused, for `beacon_handshakes_rejected_total{reason}`. Labels are
/// fixed: no user input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BadRequest,
    NotFound,
    Origin,
    Timeout,
    TokenMissing,
    TokenInvalid,
    TokenExpired,
    Forbidden,
    Draining,
    Overloaded,
    /// The client already holds `max_connections_per_ip` sockets (HTTP 429).
    IpLimit,
    UserLimit,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::BadRequest,
        Reason::NotFound,
        Reason::Origin,
        Reason::Timeout,
        Reason::TokenMissing,
        Reason::TokenInvalid,
        Reason::TokenExpired,
        Reason::Forbidden,
        Reason::Draining,
        Reason::Overloaded,
        Reason::IpLimit,
        Reason::UserLimit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::NotFound => "not_found",
            Reason::Origin => "origin",
            Reason::Timeout => "timeout",
            Reason::TokenMissing => "token_missing",
            Reason::TokenInvalid => "token_invalid",
            Reason::TokenExpired => "token_expired",
            Reason::Forbidden => "forbidden",
            Reason::Draining => "draining",
            Reason::Overloaded => "overloaded",
            Reason::IpLimit => "ip_limit",
            Reason::UserLimit => "user_limit",
        }
    }
}

/// How a refused upgrade is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An HTTP error instead of the `101`.
    Http(HttpError),
    /// The `101` (unless it already went out) and at once this declared close.
    Close(CloseId),
}

/// A refused upgrade: how it is answered and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub answer: Answer,
    pub reason: Reason,
}

impl Refused {
    fn http(kind: HttpErrorKind, message: &'static str, reason: Reason) -> Refused {
        Refused {
            answer: Answer::Http(HttpError::new(kind, message)),
            reason,
        }
    }

    /// The server is draining: come back elsewhere or later.
    pub fn draining() -> Refused {
        let kind = HttpErrorKind::Overloaded { retry_after_s: 1 };
        Refused::http(kind, "server is shutting down", Reason::Draining)
    }

    /// The client's address holds its share of sockets already.
    pub fn over_ip_limit() -> Refused {
        let kind = HttpErrorKind::TooManyRequests { retry_after_s: 5 };
        Refused::http(
            kind,
            "too many connections from this address",
            Reason::IpLimit,
        )
    }

    /// The owner shard of the socket's room stayed too busy to take it.
    pub fn overloaded() -> Refused {
        let kind = HttpErrorKind::Overloaded { retry_after_s: 1 };
        Refused::http(kind, "server overloaded; retry later", Reason::Overloaded)
    }

    /// A refusal after routing: the protocol's close for `r`.
    pub fn rejection(proto: &Protocol, r: Rejection) -> Refused {
        let reason = match r {
            Rejection::TokenMissing | Rejection::AuthTimeout => Reason::TokenMissing,
            Rejection::TokenExpired => Reason::TokenExpired,
            Rejection::TokenInvalid => Reason::TokenInvalid,
            Rejection::TooManyConnections => Reason::UserLimit,
            _ => Reason::Forbidden,
        };
        Refused {
            answer: Answer::Close(proto.close_id_for(r)),
            reason,
        }
    }

    /// An authorization rule or hook said no, with the close it names.
    pub fn denied(close: CloseId) -> Refused {
        Refused {
            answer: Answer::Close(close),
            reason: Reason::Forbidden,
        }
    }
}

/// Where an endpoint's token comes from, as the request shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// The endpoint takes no token.
    NotNeeded,
    /// Found in the request (query, `Authorization: Bearer`, or subprotocol).
    Given(String),
    /// To come as the first message, `{"type": <wire>, "token": ...}`, after the `101`.
    FirstMessage(String),
    /// None of the endpoint's sources has one.
    Missing,
}

/// The endpoint an upgrade opens and what the request says about its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub endpoint: usize,
    pub params: Vec<String>,
    /// The subprotocol to echo in the `101` (a token source's marker), if any.
    pub subprotocol: Option<String>,
    pub token: Token,
}

/// Routes the upgrade to an endpoint, checks its origin and finds its token.
pub fn route(proto: &Protocol, head: &RequestHead, up: &UpgradeRequest) -> Result<Routed, Refused> {
    let routed = proto.route(&head.path);
    // A path with an endpoint's shape but without its parameters gets that endpoint's
    // declared close instead of a 404.
    if !matches!(routed, Some((_, Ok(_)))) {
        let missing = proto.endpoints.iter().find_map(|e| {
            let close = e.missing_params?;
            let empty = matches!(e.path.matches(&head.path), Some(Err(ParamError::Empty)));
            (empty || e.path.misses_params(&head.path)).then_some(close)
        });
        if let Some(close) = missing {
            return Err(Refused {
                answer: Answer::Close(close),
                reason: Reason::NotFound,
            });
        }
    }
    let not_found =
        |msg: &'static str| Refused::http(HttpErrorKind::NotFound, msg, Reason::NotFound);
    let Some((endpoint, params)) = routed else {
        return Err(not_found("no WebSocket endpoint at this path"));
    };
    let Ok(params) = params else {
        return Err(not_found("path parameter is not valid for this endpoint"));
    };
    let ep = &proto.endpoints[endpoint];
    if let Some(origins) = &ep.origins {
        // Browsers always send Origin, so a cross-site hijack always carries one; native apps
        // send none and are not what the allow-list guards against.
        let ok = up
            .origin
            .as_deref()
            .is_none_or(|o| origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !ok {
            let kind = HttpErrorKind::Forbidden;
            return Err(Refused::http(kind, "origin not allowed", Reason::Origin));
        }
    }
    let (token, subprotocol) = find_token(ep, head, &up.protocols);
    Ok(Routed {
        endpoint,
        params,
        subprotocol,
        token,
    })
}

/// The first token the endpoint's sources give, in their declared order, and the subprotocol
/// marker to echo.
fn find_token(ep: &Endpoint, head: &RequestHead, offered: &[String]) -> (Token, Option<String>) {
    if ep.tokens.is_empty() {
        return (Token::NotNeeded, None);
    }
    let mut token = None;
    let mut subprotocol = None;
    let mut first_message = None;
    for src in &ep.token_sources {
        match src {
            TokenSource::Query(name) => {
                if let Some(t) = head.query_param(name).filter(|t| !t.is_empty()) {
                    token.get_or_insert(t);
                }
            }
            TokenSource::Bearer => {
                if let Some(t) = head.bearer_token() {
                    token.get_or_insert_with(|| t.to_owned());
                }
            }
            TokenSource::Subprotocol(marker) => {
                // `Sec-WebSocket-Protocol: jwt, <token>`: the marker is echoed (a browser
                // fails the connection unless one offered protocol comes back), the token never.
                if let Some(i) = offered.iter().position(|p| p == marker) {
                    subprotocol = Some(marker.clone());
                    if let Some(t) = offered.get(i + 1) {
                        token.get_or_insert(t.clone());
                    }
                }
            }
            TokenSource::FirstMessage(wire) => {
                first_message.get_or_insert(wire.clone());
            }
        }
    }
    let token = match (token, first_message) {
        (Some(t), _) => Token::Given(t),
        (None, Some(wire)) => Token::FirstMessage(wire),
        (None, None) => Token::Missing,
    };
    (token, subprotocol)
}

/// Verifies the endpoint's token at `now_unix`: `None` for an endpoint that takes none.
pub fn verify(
    proto: &Protocol,
    verifiers: &[Verifier],
    ep: &Endpoint,
    token: Option<&str>,
    now_unix: u64,
) -> Result<Option<Identity>, Refused> {
    if ep.tokens.is_empty() {
        return Ok(None);
    }
    let Some(token) = token else {
        return Err(Refused::rejection(proto, Rejection::TokenMissing));
    };
    auth::verify_any(verifiers, &ep.tokens, token, now_unix)
        .map(Some)
        .map_err(|r| Refused::rejection(proto, Rejection::token(r)))
}

/// What a first message carries: the token and, optionally, the position to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstMessage {
    pub token: String,
    /// From the message's `[resume]` fields; [`Since::Fresh`] when it has neither, so the
    /// query form still applies.
    pub since: Since,
}

/// The token in a first message, which must be `{"type": <wire>, "token": "<token>"}`, and the
/// position it may carry in the fields `[resume]` names (`"offset": 7, "epoch": "..."`; an
/// offset of `null` or `""` without an epoch asks where the room is, as the empty query
/// parameter does). The socket joins its room only after this message, so a position here
/// needs nothing the query form does not.
pub fn first_message(
    text: &[u8],
    wire: &str,
    resume: Option<&ResumeSpec>,
) -> Result<FirstMessage, Rejection> {
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|_| Rejection::TokenMissing)?;
    if v.get("type").and_then(|t| t.as_str()) != Some(wire) {
        return Err(Rejection::TokenMissing);
    }
    let token = v
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or(Rejection::TokenMissing)?;
    let since = resume.map_or(Since::Fresh, |r| since_in_message(&v, r));
    Ok(FirstMessage { token, since })
}

/// A position in a message's fields, read as the query form reads its parameters: the
/// offset a number or decimal text (`null` and `""` are "no position yet"), the epoch text
/// (or a number, which a client that parsed it would send).
fn since_in_message(v: &serde_json::Value, r: &ResumeSpec) -> Since {
    use serde_json::Value;
    let text = |f: &str| -> Result<Option<String>, ()> {
        match v.get(f) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(String::new())),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(()),
        }
    };
    match (text(&r.offset_field), text(&r.epoch_field)) {
        (Ok(offset), Ok(epoch)) => Since::parse(offset.as_deref(), epoch.as_deref()),
        _ => Since::Malformed,
    }
}

/// The position a reconnecting client came back with, from the query parameters `[resume]`
/// names; a fresh join when the protocol keeps no history or the client sent none.
pub fn resume_since(proto: &Protocol, head: &RequestHead) -> Since {
    let Some(r) = &proto.resume else {
        return Since::Fresh;
    };
    let offset = head.query_param(&r.offset_param);
    let epoch = head.query_param(&r.epoch_param);
    Since::parse(offset.as_deref(), epoch.as_deref())
}

/// The admitted socket's home room, rendered from the endpoint's `room` template.
pub fn home_room(ep: &Endpoint, params: &[String], identity: Option<&Identity>) -> String {
    let mut never = || 0;
    let mut ctx = RenderCtx {
        params,
        param_names: &[],
        claims: identity.map(|i| &i.claims),
        user_id: identity.map(|i| i.user_id.as_str()),
        inbound: None,
        now_ms: 0,
        next_id: &mut never,
        minted: None,
        geo: None,
    };
    ctx.string(&ep.room)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::{Algorithm, Issuer, KeyMaterial};
    use crate::protocol::load_protocol;
    use crate::ws::http::{parse_head, HeadLimits, HeadParse};

    const SECRET: &[u8] = b"test-secret-that-is-at-least-32-bytes-long!!";
    const NOW: u64 = 1_700_000_000;

    fn setup() -> (Protocol, Vec<Verifier>, Issuer) {
        let p = load_protocol(include_str!("../../tests/fixtures/core.toml")).unwrap();
        let key = KeyMaterial::Hmac(SECRET.to_vec());
        let v = crate::auth::hmac_verifier(&p.tokens[0], SECRET);
        (p, vec![v], Issuer::new(Algorithm::HS256, &key).unwrap())
    }

    fn token(iss: &Issuer, user: u64, issued: u64, ttl_s: u64) -> String {
        let claims = json!({"user_id": user, "role": "member", "token_type": "access"});
        iss.issue(claims.as_object().unwrap().clone(), issued, ttl_s)
            .unwrap()
    }

    fn head(path: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        match parse_head(raw.as_bytes(), &HeadLimits::SERVER).unwrap() {
            HeadParse::Complete(h) => h,
            HeadParse::Partial => panic!("partial head"),
        }
    }

    fn upgrade(protocols: &[&str], origin: Option<&str>) -> UpgradeRequest {
        UpgradeRequest {
            key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
            protocols: protocols.iter().map(|p| p.to_string()).collect(),
            origin: origin.map(str::to_owned),
        }
    }

    fn endpoint(p: &Protocol, name: &str) -> usize {
        p.endpoints.iter().position(|e| e.name == name).unwrap()
    }

    #[test]
    fn routes_by_path_and_finds_the_token_in_the_declared_order() {
        let (p, _, _) = setup();
        // The room endpoint declares query, then bearer, then subprotocol.
        let h = head(
            "/ws/rooms/r1/?token=from-query",
            &[("Authorization", "Bearer from-header")],
        );
        let r = route(&p, &h, &upgrade(&["jwt", "from-subprotocol"], None)).unwrap();
        assert_eq!(r.endpoint, endpoint(&p, "room"));
        assert_eq!(r.params, ["r1"]);
        assert_eq!(r.token, Token::Given("from-query".into()));
        assert_eq!(r.subprotocol.as_deref(), Some("jwt"));

        let h = head("/ws/rooms/r1/", &[]);
        let r = route(&p, &h, &upgrade(&["jwt", "from-subprotocol"], None)).unwrap();
        assert_eq!(r.token, Token::Given("from-subprotocol".into()));

        let r = route(&p, &head("/ws/rooms/r1/", &[]), &upgrade(&[], None)).unwrap();
        assert_eq!((r.token, r.subprotocol), (Token::Missing, None));
    }

    #[test]
    fn first_message_endpoints_wait_for_the_token_unless_the_request_has_one() {
        let (p, _, _) = setup();
        let first = &p.endpoints[endpoint(&p, "first")];
        let wire = first
            .token_sources
            .iter()
            .find_map(|s| match s {
                TokenSource::FirstMessage(w) => Some(w.clone()),
                _ => None,
            })
            .expect("the fixture's first-message endpoint");
        let r = route(&p, &head("/ws/first/", &[]), &upgrade(&[], None)).unwrap();
        assert_eq!(r.token, Token::FirstMessage(wire.clone()));

        let msg = json!({"type": wire, "token": "abc"}).to_string();
        let token = |m: &str| first_message(m.as_bytes(), &wire, None).map(|f| f.token);
        assert_eq!(token(&msg), Ok("abc".into()));
        for bad in [
            json!({"type": "other", "token": "abc"}).to_string(),
            json!({"type": wire, "token": ""}).to_string(),
            json!({"type": wire, "token": 7}).to_string(),
            json!({"type": wire}).to_string(),
            "not json".to_owned(),
        ] {
            assert_eq!(token(&bad), Err(Rejection::TokenMissing), "{bad}");
        }
    }

    #[test]
    fn a_first_message_may_carry_the_position_to_resume_from() {
        let p = load_protocol(include_str!("../../tests/fixtures/history.toml")).unwrap();
        let r = p.resume.as_ref();
        let since = |m: serde_json::Value| {
            first_message(m.to_string().as_bytes(), "authenticate", r)
                .unwrap()
                .since
        };
        let at = |offset, epoch| {
            Since::At(crate::history::Position {
                offset,
                epoch: crate::history::Epoch(epoch),
            })
        };
        let auth = |extra: serde_json::Value| {
            let mut m = json!({"type": "authenticate", "token": "t"});
            m.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            since(m)
        };
        assert_eq!(auth(json!({})), Since::Fresh);
        assert_eq!(auth(json!({"offset": 7, "epoch": "99"})), at(7, 99));
        assert_eq!(auth(json!({"offset": "7", "epoch": 99})), at(7, 99));
        assert_eq!(auth(json!({"offset": null})), Since::Start);
        assert_eq!(auth(json!({"offset": ""})), Since::Start);
        for bad in [
            json!({"offset": 7}),
            json!({"epoch": "99"}),
            json!({"offset": -1, "epoch": "99"}),
            json!({"offset": 1.5, "epoch": "99"}),
            json!({"offset": [7], "epoch": "99"}),
            json!({"offset": 7, "epoch": {"e": 1}}),
        ] {
            assert_eq!(auth(bad.clone()), Since::Malformed, "{bad}");
        }
        // Without `[resume]` the fields are the app's own business.
        let m = json!({"type": "authenticate", "token": "t", "offset": 7});
        let f = first_message(m.to_string().as_bytes(), "authenticate", None).unwrap();
        assert_eq!(f.since, Since::Fresh);
    }

    #[test]
    fn unknown_paths_get_404_and_endpoints_without_tokens_need_none() {
        let (p, v, _) = setup();
        let r = route(&p, &head("/nowhere/", &[]), &upgrade(&[], None)).unwrap_err();
        assert_eq!(r.reason, Reason::NotFound);
        assert!(matches!(&r.answer, Answer::Http(e) if e.status() == 404));

        let echo = route(&p, &head("/ws/echo/", &[]), &upgrade(&[], None)).unwrap();
        assert_eq!(echo.token, Token::NotNeeded);
        let ep = &p.endpoints[echo.endpoint];
        assert_eq!(verify(&p, &v, ep, None, NOW), Ok(None));
    }

    #[test]
    fn tokens_verify_at_the_time_given() {
        let (p, v, iss) = setup();
        let ep = &p.endpoints[endpoint(&p, "room")];
        let t = token(&iss, 7, NOW, 60);
        let id = verify(&p, &v, ep, Some(&t), NOW + 59).unwrap().unwrap();
        assert_eq!(id.user_id.as_str(), "7");

        let expired = verify(&p, &v, ep, Some(&t), NOW + 61).unwrap_err();
        assert_eq!(expired.reason, Reason::TokenExpired);
        let close = p.close_id_for(Rejection::TokenExpired);
        assert_eq!(expired.answer, Answer::Close(close));

        let forged = verify(&p, &v, ep, Some("a.b.c"), NOW).unwrap_err();
        assert_eq!(forged.reason, Reason::TokenInvalid);
        let missing = verify(&p, &v, ep, None, NOW).unwrap_err();
        assert_eq!(missing.reason, Reason::TokenMissing);
        let close = p.close_id_for(Rejection::TokenMissing);
        assert_eq!(missing.answer, Answer::Close(close));
    }

    #[test]
    fn the_home_room_comes_from_the_path_or_the_token() {
        let (p, v, iss) = setup();
        let room = &p.endpoints[endpoint(&p, "room")];
        assert_eq!(home_room(room, &["r9".into()], None), "room:r9");
        let first = &p.endpoints[endpoint(&p, "first")];
        let t = token(&iss, 42, NOW, 60);
        let id = verify(&p, &v, first, Some(&t), NOW).unwrap();
        assert_eq!(home_room(first, &[], id.as_ref()), "user:42");
    }
}
