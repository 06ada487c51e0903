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
use crate::admission::{self, Answer, FirstMessage, Refused, Token};
use crate::history::store::Since;
use crate::protocol::Rejection;
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

/// Carries out a refusal. `accept`: the `101` to send before the close, or `None` when it
/// already went out (first-message authentication) or the answer is an HTTP error.
async fn refuse(shard: &Shard, mut stream: TcpStream, accept: Option<Vec<u8>>, r: Refused) {
    shard.probe.rejected(r.reason);
    let close = match r.answer {
        Answer::Http(e) => return answer_error(&mut stream, e).await,
        Answer::Close(close) => &shard.shared.proto.closes[close],
    };
    // Browsers cannot read an HTTP status on a failed upgrade, but they do see a close code.
    let mut out = accept.unwrap_or_default();
    out.extend_from_slice(&codec::close_frame(close.code, &close.reason));
    respond(&mut stream, &out).await;
    shard.probe.closed(close.code);
    // Give the client a moment to answer with its close frame so the close is clean.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut sink = [0u8; 256];
    let _ = stream.read(&mut sink).await;
}

/// Admits an upgrade: carries out what `admission` decides, step by step, and hands the
/// socket to the owner of its home room.
async fn upgrade(
    shard: Rc<Shard>,
    stream: TcpStream,
    head: RequestHead,
    up: handshake::UpgradeRequest,
    mut leftover: Vec<u8>,
) {
    let proto = shard.shared.proto.clone();
    if shard.draining.get() {
        return refuse(&shard, stream, None, Refused::draining()).await;
    }
    let Some((client, ip_slot)) = admit_client(&shard, &stream, &head) else {
        return refuse(&shard, stream, None, Refused::over_ip_limit()).await;
    };
    let routed = match admission::route(&proto, &head, &up) {
        Ok(r) => r,
        Err(r) => {
            // A declared close for a half-matching path echoes the first offered subprotocol,
            // as a browser requires of a completed upgrade.
            let sub = up.protocols.first().map(String::as_str);
            let accept = handshake::accept_response(&up.key, sub);
            return refuse(&shard, stream, Some(accept), r).await;
        }
    };
    let ep = &proto.endpoints[routed.endpoint];
    let sub = routed.subprotocol.as_deref();
    let mut stream = stream;
    // The `101`, until it goes out (first-message authentication sends it before the token).
    let mut accept = Some(handshake::accept_response(&up.key, sub));
    // A position in the first message wins over one in the query.
    let mut since_in_message = Since::Fresh;
    let token = match routed.token {
        Token::Given(t) => Some(t),
        Token::NotNeeded | Token::Missing => None,
        Token::FirstMessage(wire) => {
            respond(&mut stream, &accept.take().unwrap_or_default()).await;
            match first_message(&shard, &mut stream, &wire, &mut leftover).await {
                Ok(m) => {
                    since_in_message = m.since;
                    Some(m.token)
                }
                Err(r) => {
                    let refused = Refused::rejection(&proto, r);
                    return refuse(&shard, stream, None, refused).await;
                }
            }
        }
    };
    let now = unix_ms() / 1000;
    let mut identity =
        match admission::verify(&proto, &shard.shared.verifiers, ep, token.as_deref(), now) {
            Ok(id) => id,
            Err(r) => return refuse(&shard, stream, accept, r).await,
        };
    let who = super::hook::Subject {
        endpoint: &ep.name,
        path: &ep.path,
        params: &routed.params,
        identity: identity.as_ref(),
    };
    match super::hook::authorize(&shard, &ep.authorize, &who).await {
        Err(refusal) => {
            return refuse(&shard, stream, accept, Refused::denied(refusal.close)).await;
        }
        Ok(facts) => {
            if let Some(id) = identity.as_mut() {
                super::hook::merge_facts(&mut id.claims, facts);
            }
        }
    }
    // Counted across shards at admission: the user's sockets may live on any shard.
    let user_slot = match identity
        .as_ref()
        .map(|i| shard.shared.user_limiter.admit_user(i.user_id.as_str()))
    {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(slot))) => Some(slot),
        Some(Err(_)) => {
            let refused = Refused::rejection(&proto, Rejection::TooManyConnections);
            return refuse(&shard, stream, accept, refused).await;
        }
    };
    // And across nodes, when clustered: the user's sockets may live on any node.
    let cluster_slot = match (&user_slot, identity.as_ref()) {
        (Some(_), Some(i)) => {
            let max = proto.limits.max_connections_per_user;
            match super::cluster::admit_user(&shard, i.user_id.as_str(), max).await {
                Ok(slot) => slot,
                Err(()) => {
                    let refused = Refused::rejection(&proto, Rejection::TooManyConnections);
                    return refuse(&shard, stream, accept, refused).await;
                }
            }
        }
        _ => None,
    };
    let room = admission::home_room(ep, &routed.params, identity.as_ref());
    let since = match since_in_message {
        Since::Fresh => admission::resume_since(&proto, &head),
        given => given,
    };
    let admitted = Admitted {
        since,
        endpoint: routed.endpoint,
        params: routed.params,
        identity,
        room,
        client,
        ip_slot,
        user_slot,
        cluster_slot,
        leftover,
        handshake: accept,
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
    if super::spread::wanted(&shard, &admitted) {
        // A hot room: the socket stays here and its room's owner hands this shard the room's
        // messages. It joins when the owner says so (`spread.rs`).
        match super::spread::join(&shard, owner, socket, admitted).await {
            Ok(key) => {
                glommio::timer::sleep(super::spread::JOIN_WAIT).await;
                if let Some((socket, admitted)) = super::spread::unpark(key) {
                    tracing::warn!(
                        owner,
                        "no answer from the room's owner; refusing the upgrade"
                    );
                    refuse_overloaded(&shard, socket, admitted).await;
                }
            }
            Err((socket, admitted)) => refuse_overloaded(&shard, socket, admitted).await,
        }
        return;
    }
    let msg = ShardMsg::Handoff(Box::new(Handoff { socket, admitted }));
    let Err(msg) = router::send(&shard, owner, msg, Traffic::Handoff).await else {
        Probe::inc(&shard.probe.handoffs, 1);
        return;
    };
    tracing::warn!(owner, "owner shard inbox full; refusing the upgrade");
    if let ShardMsg::Handoff(h) = msg {
        refuse_overloaded(&shard, h.socket, h.admitted).await;
    }
}

/// An upgrade the owner of its room could not take in time: `503` before the `101`, close
/// 1013 after it (first-message authentication), where only a close frame reaches the client.
pub async fn refuse_overloaded(shard: &Shard, socket: super::fd::OwnedSocket, admitted: Admitted) {
    let stream = super::fd::attach(socket);
    match admitted.handshake {
        Some(_) => refuse(shard, stream, None, Refused::overloaded()).await,
        None => {
            shard.probe.rejected(HandshakeReject::Overloaded);
            shard.probe.closed(1013);
            let mut stream = stream;
            let close = codec::close_frame(1013, "server overloaded; retry later");
            respond(&mut stream, &close).await;
        }
    }
}

/// Waits for `{"type": <wire>, "token": "..."}` as the first message (with a position to
/// resume from, if the client sends one), within the auth timeout and a small pre-auth size
/// limit. Bytes after that message stay in `leftover`.
async fn first_message(
    shard: &Shard,
    stream: &mut TcpStream,
    wire: &str,
    leftover: &mut Vec<u8>,
) -> Result<FirstMessage, Rejection> {
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
                let resume = shard.shared.proto.resume.as_ref();
                let message = admission::first_message(t, wire, resume)?;
                // A client that starts a fragmented message right after authenticating is
                // legal but rare; it is refused rather than mis-decoded.
                *leftover = dec.take_buffered().ok_or(Rejection::TokenMissing)?;
                return Ok(message);
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
