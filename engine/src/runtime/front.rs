//! The accepting side, on every shard: accept, read the request head within the handshake
//! timeout, serve plain HTTP, or authenticate and authorize an upgrade, then hand the socket
//! to the owner of its home room. Exists on every shard.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::client_ip::{client_addr, ConnSlot};
use super::msg::{Admitted, Handoff, ShardMsg};
use super::probe::{HandshakeReject, Probe};
use super::router::{self, Dest, Traffic};
use super::shard::Shard;
use super::shared::unix_ms;
use crate::message::RenderCtx;
use crate::protocol::{CloseSpec, Endpoint, ParamError, Rejection, TokenSource};
use crate::ws::codec::{self, Decoder, Event};
use crate::ws::handshake::{self, UpgradeCheck};
use crate::ws::http::{self, HeadError, HeadLimits, HeadParse, RequestHead};
use crate::ws::http_error::{HttpError, HttpErrorKind};

/// Keep-alive HTTP clients (Prometheus, app backends) may idle this long between requests.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Accepts until the shard drains. Accept errors (EMFILE when out of descriptors) back off
/// exponentially instead of spinning.
pub async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    mut stop: futures::channel::oneshot::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = {
            let accept = std::pin::pin!(listener.accept());
            match futures::future::select(accept, &mut stop).await {
                futures::future::Either::Left((r, _)) => r,
                futures::future::Either::Right(_) => return,
            }
        };
        match accepted {
            Ok(stream) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(handle_incoming(shard.clone(), stream)).detach();
            }
            Err(e) => {
                tracing::warn!(shard = shard.id, error = %e, "accept failed; backing off");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

enum ReadHead {
    Head(RequestHead),
    Closed,
    TimedOut,
    Bad(HeadError),
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> ReadHead {
    let mut chunk = [0u8; 4096];
    loop {
        if !buf.is_empty() {
            match http::parse_head(buf, &HeadLimits::SERVER) {
                Ok(HeadParse::Complete(h)) => return ReadHead::Head(h),
                Ok(HeadParse::Partial) => {}
                Err(e) => return ReadHead::Bad(e),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return ReadHead::TimedOut;
        }
        let _ = stream.set_read_timeout(Some(deadline - now));
        match stream.read(&mut chunk).await {
            Ok(0) => return ReadHead::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return ReadHead::TimedOut,
            Err(_) => return ReadHead::Closed,
        }
    }
}

async fn respond(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
}

/// Refuses before any upgrade, with the error's status; the connection closes after it.
async fn answer_error(stream: &mut TcpStream, e: impl Into<HttpError>) {
    respond(stream, &e.into().response()).await;
}

async fn handle_incoming(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let mut deadline =
        Instant::now() + Duration::from_millis(shard.shared.proto.limits.handshake_timeout_ms);
    loop {
        let head = match read_head(&mut stream, &mut buf, deadline).await {
            ReadHead::Head(h) => h,
            ReadHead::Closed => return,
            ReadHead::TimedOut => {
                if !buf.is_empty() {
                    shard.probe.rejected(HandshakeReject::Timeout);
                    let timeout =
                        HttpError::new(HttpErrorKind::Timeout, "request head not received in time");
                    answer_error(&mut stream, timeout).await;
                }
                return;
            }
            ReadHead::Bad(e) => {
                shard.probe.rejected(HandshakeReject::BadRequest);
                answer_error(&mut stream, e).await;
                return;
            }
        };
        match handshake::check_upgrade(&head) {
            Err(e) => {
                shard.probe.rejected(HandshakeReject::BadRequest);
                answer_error(&mut stream, e).await;
                return;
            }
            Ok(UpgradeCheck::NotUpgrade) => {
                let keep = super::api::serve(&shard, &mut stream, &head, &mut buf).await;
                if !keep {
                    return;
                }
                deadline = Instant::now() + KEEP_ALIVE;
            }
            Ok(UpgradeCheck::Upgrade(up)) => {
                let leftover = buf.split_off(head.head_len.min(buf.len()));
                upgrade(shard, stream, head, up, leftover).await;
                return;
            }
        }
    }
}

/// The client's address (see `client_ip` for whom `X-Forwarded-For` is believed from) and
/// its place under the per-IP cap; `None` when the client is over the cap.
fn admit_client(
    shard: &Shard,
    stream: &TcpStream,
    head: &RequestHead,
) -> Option<(std::net::IpAddr, Option<ConnSlot>)> {
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let client = client_addr(
        peer,
        head.header_all("x-forwarded-for"),
        &shard.shared.config.trusted_proxies,
    );
    let slot = shard.shared.ip_limiter.admit(client).ok()?;
    Some((client, slot))
}

/// Where the token came from decides what the handshake echoes.
struct Found {
    token: Option<String>,
    subprotocol: Option<String>,
}

fn find_token(ep: &Endpoint, head: &RequestHead, offered: &[String]) -> Found {
    let mut found = Found {
        token: None,
        subprotocol: None,
    };
    for src in &ep.token_sources {
        match src {
            TokenSource::Query(name) => {
                if let Some(t) = head.query_param(name).filter(|t| !t.is_empty()) {
                    found.token.get_or_insert(t);
                }
            }
            TokenSource::Bearer => {
                if let Some(t) = head.bearer_token() {
                    found.token.get_or_insert_with(|| t.to_owned());
                }
            }
            TokenSource::Subprotocol(marker) => {
                // `Sec-WebSocket-Protocol: jwt, <token>`: the marker is echoed (a browser
                // fails the connection unless one offered protocol comes back), the token never.
                if let Some(i) = offered.iter().position(|p| p == marker) {
                    found.subprotocol = Some(marker.clone());
                    if let Some(t) = offered.get(i + 1) {
                        found.token.get_or_insert(t.clone());
                    }
                }
            }
            TokenSource::FirstMessage(_) => {}
        }
    }
    found
}

fn reject_label(r: Rejection) -> HandshakeReject {
    match r {
        Rejection::TokenMissing | Rejection::AuthTimeout => HandshakeReject::TokenMissing,
        Rejection::TokenExpired => HandshakeReject::TokenExpired,
        Rejection::TokenInvalid => HandshakeReject::TokenInvalid,
        _ => HandshakeReject::Forbidden,
    }
}

/// How the `101` of a refused upgrade is answered: with the client's key and subprotocol, or
/// not at all when it already went out (first-message authentication).
struct Accept<'a> {
    key: &'a str,
    subprotocol: Option<&'a str>,
    already_sent: bool,
}

/// Completes the upgrade and closes at once with the declared code: browsers cannot read an
/// HTTP status on a failed upgrade, but they do see a close code.
async fn refuse(
    shard: &Shard,
    mut stream: TcpStream,
    accept: Accept<'_>,
    why: HandshakeReject,
    close: &CloseSpec,
) {
    shard.probe.rejected(why);
    let mut out = if accept.already_sent {
        Vec::new()
    } else {
        handshake::accept_response(accept.key, accept.subprotocol)
    };
    out.extend_from_slice(&codec::close_frame(close.code, &close.reason));
    respond(&mut stream, &out).await;
    shard.probe.closed(close.code);
    // Give the client a moment to answer with its close frame so the close is clean.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut sink = [0u8; 256];
    let _ = stream.read(&mut sink).await;
}

async fn upgrade(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    head: RequestHead,
    up: handshake::UpgradeRequest,
    mut leftover: Vec<u8>,
) {
    let proto = shard.shared.proto.clone();
    if shard.draining.get() {
        shard.probe.rejected(HandshakeReject::Draining);
        let draining = HttpErrorKind::Overloaded { retry_after_s: 1 };
        let refusal = HttpError::new(draining, "server is shutting down");
        answer_error(&mut stream, refusal).await;
        return;
    }
    let (client, ip_slot) = match admit_client(&shard, &stream, &head) {
        Some(c) => c,
        None => {
            shard.probe.rejected(HandshakeReject::IpLimit);
            let over = HttpErrorKind::TooManyRequests { retry_after_s: 5 };
            let refusal = HttpError::new(over, "too many connections from this address");
            answer_error(&mut stream, refusal).await;
            return;
        }
    };
    // A path with an endpoint's shape but without its parameters gets that endpoint's
    // declared close (after the upgrade, so browsers see the code) instead of a 404.
    let routed = proto.route(&head.path);
    let missing = proto.endpoints.iter().find_map(|e| {
        if matches!(routed, Some((_, Ok(_)))) {
            return None;
        }
        let close = e.missing_params?;
        let empty = matches!(e.path.matches(&head.path), Some(Err(ParamError::Empty)));
        (empty || e.path.misses_params(&head.path)).then_some(close)
    });
    if let Some(close) = missing {
        let accept = Accept {
            key: &up.key,
            subprotocol: up.protocols.first().map(String::as_str),
            already_sent: false,
        };
        refuse(
            &shard,
            stream,
            accept,
            HandshakeReject::NotFound,
            &proto.closes[close],
        )
        .await;
        return;
    }
    let Some((ep_idx, params)) = routed else {
        shard.probe.rejected(HandshakeReject::NotFound);
        let refusal = HttpError::new(
            HttpErrorKind::NotFound,
            "no WebSocket endpoint at this path",
        );
        answer_error(&mut stream, refusal).await;
        return;
    };
    let Ok(params) = params else {
        shard.probe.rejected(HandshakeReject::NotFound);
        let refusal = HttpError::new(
            HttpErrorKind::NotFound,
            "path parameter is not valid for this endpoint",
        );
        answer_error(&mut stream, refusal).await;
        return;
    };
    let ep = &proto.endpoints[ep_idx];
    if let Some(origins) = &ep.origins {
        // Browsers always send Origin, so a cross-site hijack always carries one; native apps
        // send none and are not what the allow-list guards against.
        let ok = up
            .origin
            .as_deref()
            .is_none_or(|o| origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !ok {
            shard.probe.rejected(HandshakeReject::Origin);
            let refusal = HttpError::new(HttpErrorKind::Forbidden, "origin not allowed");
            answer_error(&mut stream, refusal).await;
            return;
        }
    }
    let found = find_token(ep, &head, &up.protocols);
    let sub = found.subprotocol.as_deref();
    let mut handshake_done = false;
    let identity = if ep.tokens.is_empty() {
        None
    } else {
        let token = match found.token {
            Some(t) => Some(t),
            None => {
                let wire = ep.token_sources.iter().find_map(|s| match s {
                    TokenSource::FirstMessage(w) => Some(w.clone()),
                    _ => None,
                });
                match wire {
                    None => None,
                    Some(wire) => {
                        respond(&mut stream, &handshake::accept_response(&up.key, sub)).await;
                        handshake_done = true;
                        match first_message_token(&shard, &mut stream, &wire, &mut leftover).await {
                            Ok(t) => Some(t),
                            Err(r) => {
                                let accept = Accept {
                                    key: &up.key,
                                    subprotocol: sub,
                                    already_sent: true,
                                };
                                refuse(&shard, stream, accept, reject_label(r), proto.close_for(r))
                                    .await;
                                return;
                            }
                        }
                    }
                }
            }
        };
        let result = match token {
            None => Err(Rejection::TokenMissing),
            Some(t) => {
                let now = unix_ms() / 1000;
                crate::auth::verify_any(&shard.shared.verifiers, &ep.tokens, &t, now)
                    .map_err(Rejection::token)
            }
        };
        match result {
            Ok(id) => Some(id),
            Err(r) => {
                let accept = Accept {
                    key: &up.key,
                    subprotocol: sub,
                    already_sent: handshake_done,
                };
                refuse(&shard, stream, accept, reject_label(r), proto.close_for(r)).await;
                return;
            }
        }
    };
    let who = super::hook::Subject {
        endpoint: &ep.name,
        path: &ep.path,
        params: &params,
        identity: identity.as_ref(),
    };
    let accept = Accept {
        key: &up.key,
        subprotocol: sub,
        already_sent: handshake_done,
    };
    if let Err(refusal) = super::hook::authorize(&shard, &ep.authorize, &who).await {
        refuse(
            &shard,
            stream,
            accept,
            HandshakeReject::Forbidden,
            &proto.closes[refusal.close],
        )
        .await;
        return;
    }
    // Counted across shards at admission: the user's sockets may live on any shard.
    let user_slot = match identity
        .as_ref()
        .map(|i| shard.shared.user_limiter.admit_user(i.user_id.as_str()))
    {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(slot))) => Some(slot),
        Some(Err(_)) => {
            let c = proto.close_for(Rejection::TooManyConnections);
            refuse(&shard, stream, accept, HandshakeReject::UserLimit, c).await;
            return;
        }
    };
    let room = {
        let mut never = || 0;
        let mut ctx = RenderCtx {
            params: &params,
            claims: identity.as_ref().map(|i| &i.claims),
            user_id: identity.as_ref().map(|i| i.user_id.as_str()),
            inbound: None,
            now_ms: 0,
            next_id: &mut never,
            minted: None,
            geo: None,
        };
        ctx.string(&ep.room)
    };
    let admitted = Admitted {
        endpoint: ep_idx,
        params,
        identity,
        room,
        client,
        ip_slot,
        user_slot,
        leftover,
        handshake: (!handshake_done).then(|| handshake::accept_response(&up.key, sub)),
    };
    // The connection's socket leaves glommio's stream either way: on its owner shard the
    // shard's poller watches it.
    let socket = match super::fd::detach(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not detach the upgraded socket");
            return;
        }
    };
    let owner = match router::dest(&shard, &admitted.room) {
        Dest::Here => return super::conn::start(shard, socket, admitted),
        Dest::Shard(owner) => owner,
    };
    let msg = ShardMsg::Handoff(Box::new(Handoff { socket, admitted }));
    let Err(msg) = router::send(&shard, owner, msg, Traffic::Handoff).await else {
        Probe::inc(&shard.probe.handoffs, 1);
        return;
    };
    shard.probe.rejected(HandshakeReject::Overloaded);
    tracing::warn!(owner, "owner shard inbox full; refusing the upgrade");
    if let ShardMsg::Handoff(h) = msg {
        let mut stream = super::fd::attach(h.socket);
        // Before the `101` the client reads a status; after it (first-message
        // authentication) only a close frame reaches it.
        let answer = match h.admitted.handshake {
            Some(_) => {
                let overloaded = HttpErrorKind::Overloaded { retry_after_s: 1 };
                HttpError::new(overloaded, "server overloaded; retry later").response()
            }
            None => {
                shard.probe.closed(1013);
                codec::close_frame(1013, "server overloaded; retry later").to_vec()
            }
        };
        respond(&mut stream, &answer).await;
    }
}

/// Waits for `{"type": <wire>, "token": "..."}` as the first message, within the auth
/// timeout and a small pre-auth size limit. Bytes after that message stay in `leftover`.
async fn first_message_token(
    shard: &Shard,
    stream: &mut TcpStream,
    wire: &str,
    leftover: &mut Vec<u8>,
) -> Result<String, Rejection> {
    const PRE_AUTH_MAX: usize = 16 * 1024;
    let deadline =
        Instant::now() + Duration::from_millis(shard.shared.proto.limits.auth_timeout_ms);
    let mut dec = Decoder::new(codec::Limits {
        max_frame_bytes: PRE_AUTH_MAX,
        max_message_bytes: PRE_AUTH_MAX,
    });
    dec.feed(leftover);
    leftover.clear();
    let mut chunk = [0u8; 4096];
    loop {
        match dec.next_event() {
            Ok(Some(Event::Text(t))) => {
                let v: serde_json::Value =
                    serde_json::from_slice(t).map_err(|_| Rejection::TokenMissing)?;
                let token = (v.get("type").and_then(|t| t.as_str()) == Some(wire))
                    .then(|| v.get("token").and_then(|t| t.as_str()).map(str::to_owned))
                    .flatten()
                    .ok_or(Rejection::TokenMissing)?;
                // A client that starts a fragmented message right after authenticating is
                // legal but rare; it is refused rather than mis-decoded.
                *leftover = dec.take_buffered().ok_or(Rejection::TokenMissing)?;
                return Ok(token);
            }
            Ok(Some(Event::Ping(_) | Event::Pong(_))) => continue,
            Ok(Some(_)) | Err(_) => return Err(Rejection::TokenMissing),
            Ok(None) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Rejection::AuthTimeout);
        }
        let _ = stream.set_read_timeout(Some(deadline - now));
        match stream.read(&mut chunk).await {
            Ok(0) => return Err(Rejection::TokenMissing),
            Ok(n) => dec.feed(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(Rejection::AuthTimeout)
            }
            Err(_) => return Err(Rejection::TokenMissing),
        }
    }
}
