//! The HTTP API on the WebSocket port: health, readiness, metrics and the publish API.
//! Exists on every shard: whichever shard accepted the request serves it and routes
//! deliveries to the owners of the target rooms.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde_json::{json, Value};

use super::msg::ShardMsg;
use super::probe::Probe;
use super::router::{self, Traffic};
use super::shard::Shard;
use crate::publish;
use crate::ws::handshake;
use crate::ws::http::{HeadError, Method, RequestHead};
use crate::ws::http_error::{HttpError, HttpErrorKind};

struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    extra: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, v: Value) -> Self {
        Reply {
            status,
            body: serde_json::to_vec(&v).unwrap_or_default(),
            content_type: "application/json",
            extra: Vec::new(),
        }
    }
}

impl From<HttpError> for Reply {
    fn from(e: HttpError) -> Self {
        Reply {
            status: e.status(),
            body: e.body(),
            content_type: "application/json",
            extra: e
                .header()
                .map(|(n, v)| (n, v.into_owned()))
                .into_iter()
                .collect(),
        }
    }
}

/// Serves one request; returns whether the connection may carry another.
pub async fn serve(
    shard: &std::rc::Rc<Shard>,
    stream: &mut TcpStream,
    head: &RequestHead,
    buf: &mut Vec<u8>,
) -> bool {
    shard.active_requests.set(shard.active_requests.get() + 1);
    let (reply, keep) = match read_body(shard, stream, head, buf).await {
        Ok(body) => (route(shard, head, body).await, wants_keep_alive(head)),
        Err(e) => (e.into(), false),
    };
    let extra: Vec<(&str, &str)> = reply.extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bytes =
        handshake::http_response(reply.status, reply.content_type, &reply.body, &extra, !keep);
    let ok = stream.write_all(&bytes).await.is_ok() && stream.flush().await.is_ok();
    shard.active_requests.set(shard.active_requests.get() - 1);
    if ok && !keep {
        linger_close(stream).await;
    }
    ok && keep && !shard.draining.get()
}

/// Closing a socket with unread input makes the kernel send RST, which can destroy the
/// response before the client reads it (a 413 for a body we refused to read). Half-close, then
/// discard input for a bounded time and size so the client sees the answer.
async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 8192];
    let mut budget = 8 << 20;
    while budget > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let _ = stream.set_read_timeout(Some(deadline - now));
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => budget -= n.min(budget),
        }
    }
}

fn wants_keep_alive(head: &RequestHead) -> bool {
    let conn = head.header("connection").map(|c| c.to_ascii_lowercase());
    match head.minor_version {
        0 => conn.as_deref() == Some("keep-alive"),
        _ => conn.as_deref() != Some("close"),
    }
}

/// Reads the body announced by Content-Length (a chunked or otherwise unframed body is a 400)
/// up to the deployment's limit, leaving any pipelined bytes in `buf`.
async fn read_body(
    shard: &Shard,
    stream: &mut TcpStream,
    head: &RequestHead,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, HttpError> {
    let len = match head.content_length() {
        Ok(n) => n.unwrap_or(0),
        Err(_) => {
            buf.clear();
            return Err(HttpError::new(
                HttpErrorKind::BadRequest,
                "invalid Content-Length",
            ));
        }
    };
    if len > shard.shared.config.api_max_body_bytes {
        buf.clear();
        return Err(HeadError::BodyTooLarge.into());
    }
    let start = head.head_len.min(buf.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 8192];
    while buf.len() < start + len {
        let now = Instant::now();
        if now >= deadline {
            buf.clear();
            return Err(HttpError::new(
                HttpErrorKind::Timeout,
                "request body not received in time",
            ));
        }
        let _ = stream.set_read_timeout(Some(deadline - now));
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                buf.clear();
                return Err(HttpError::new(
                    HttpErrorKind::BadRequest,
                    "connection closed before the body was complete",
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[start..start + len].to_vec();
    buf.drain(..start + len);
    Ok(body)
}

async fn route(shard: &std::rc::Rc<Shard>, head: &RequestHead, body: Vec<u8>) -> Reply {
    let path = head.path.as_str();
    let draining = shard.draining.get()
        || shard
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed);
    match (path, &head.method) {
        ("/healthz", Method::Get) => Reply::json(200, json!({"status": "ok"})),
        ("/readyz", Method::Get) => {
            use super::cluster::Readiness;
            if draining {
                Reply::json(503, json!({"status": "draining"}))
            } else {
                match super::cluster::node_readiness(shard) {
                    Readiness::Ready => Reply::json(200, json!({"status": "ready"})),
                    Readiness::Degraded => Reply::json(
                        200,
                        json!({"status": "degraded", "broker": super::cluster::broker_name(shard)}),
                    ),
                    Readiness::Down => Reply::json(
                        503,
                        json!({"status": "broker_unavailable", "broker": super::cluster::broker_name(shard)}),
                    ),
                }
            }
        }
        ("/metrics", Method::Get) => Reply {
            status: 200,
            body: super::probe::render(&shard.shared.probes, draining).into_bytes(),
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            extra: Vec::new(),
        },
        ("/api/publish", Method::Post) => publish(shard, head, &body).await,
        ("/healthz" | "/readyz" | "/metrics", _) => method_not_allowed("GET"),
        ("/api/publish", _) => method_not_allowed("POST"),
        (p, m) if shard.shared.proto.geo.dispatch_at(p).is_some() => {
            match shard.shared.proto.geo.dispatch_at(p) {
                Some(i) if *m == Method::Post => {
                    if let Err(e) = check_api_key(shard, head) {
                        return e.into();
                    }
                    ok_or_error(super::geo::dispatch(shard, i, &body).await)
                }
                Some(_) => method_not_allowed("POST"),
                None => not_found(),
            }
        }
        _ => match super::http_endpoints::serve(shard, head, &body).await {
            Some(answer) => ok_or_error(answer),
            None => not_found(),
        },
    }
}

fn ok_or_error(answer: Result<Value, HttpError>) -> Reply {
    answer.map_or_else(Reply::from, |v| Reply::json(200, v))
}

fn not_found() -> Reply {
    HttpError::new(HttpErrorKind::NotFound, "not found").into()
}

fn method_not_allowed(allow: &'static str) -> Reply {
    HttpError::new(
        HttpErrorKind::MethodNotAllowed { allow },
        "method not allowed",
    )
    .into()
}

/// Compares in time independent of where the first difference is (only the key's length
/// leaks). aws-lc's `CRYPTO_memcmp` rather than a hand-written fold, which the optimizer is
/// free to turn back into an early exit.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// The publish API key as a Bearer token, and a JSON (or untyped) body.
fn check_api_key(shard: &Shard, head: &RequestHead) -> Result<(), HttpError> {
    let Some(key) = shard.shared.api_key.as_deref() else {
        return Err(HttpError::new(
            HttpErrorKind::Unavailable,
            "publish API disabled: no API key configured",
        ));
    };
    if !head
        .bearer_token()
        .is_some_and(|p| same_secret(p.as_bytes(), key.as_bytes()))
    {
        return Err(HttpError::new(
            HttpErrorKind::Unauthorized,
            "missing or invalid API key",
        ));
    }
    if !head
        .header("content-type")
        .is_none_or(|c| c.to_ascii_lowercase().starts_with("application/json"))
    {
        return Err(HttpError::new(
            HttpErrorKind::UnsupportedMediaType,
            "body must be application/json",
        ));
    }
    Ok(())
}

async fn publish(shard: &std::rc::Rc<Shard>, head: &RequestHead, body: &[u8]) -> Reply {
    let started = Instant::now();
    if let Err(e) = check_api_key(shard, head) {
        return e.into();
    }
    let prepared = match publish::prepare(&shard.shared.proto, body) {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    let single = prepared.single;
    if shard.shared.config.cluster.is_some() && !local_only(head) {
        return publish_cluster(shard, prepared.items, single, started).await;
    }

    // One hop per target shard, carrying all of that shard's items.
    let nr = shard.shared.nr_shards;
    let mut per_shard: Vec<Vec<(usize, String, Bytes)>> = (0..nr).map(|_| Vec::new()).collect();
    for (i, (room, frame)) in prepared.items.into_iter().enumerate() {
        per_shard[router::owner(shard, &room)].push((i, room, frame));
    }
    let total = per_shard.iter().map(Vec::len).sum::<usize>();
    let mut delivered = vec![0usize; total];
    let mut rooms = vec![String::new(); total];
    let mut waits = Vec::new();
    // This shard's part goes last: it cannot fail, so a refusal leaves nothing delivered.
    let local = std::mem::take(&mut per_shard[shard.id]);
    for (owner, batch) in per_shard.into_iter().enumerate() {
        if batch.is_empty() {
            continue;
        }
        let idx: Vec<usize> = batch.iter().map(|(i, _, _)| *i).collect();
        let mut items = Vec::with_capacity(batch.len());
        for (i, room, frame) in batch {
            rooms[i] = room.clone();
            items.push((room, frame));
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        let msg = ShardMsg::Deliver {
            items,
            exclude: None,
            reply: Some(tx),
        };
        // All or nothing: once a part is out, the rest waits until it fits.
        let traffic = if waits.is_empty() {
            Traffic::Publish
        } else {
            Traffic::PublishRest
        };
        if router::send(shard, owner, msg, traffic).await.is_err() {
            let overloaded = HttpErrorKind::Overloaded { retry_after_s: 1 };
            return HttpError::new(overloaded, "overloaded; retry later").into();
        }
        waits.push((idx, rx));
    }
    for (i, room, frame) in local {
        delivered[i] = shard.deliver(&room, &frame, None);
        rooms[i] = room;
    }
    for (idx, rx) in waits {
        if let Ok(counts) = rx.await {
            for (i, n) in idx.into_iter().zip(counts) {
                delivered[i] = n;
            }
        }
    }
    shard
        .probe
        .publish_latency(started.elapsed().as_nanos() as u64);
    Probe::inc(&shard.probe.publishes, total as u64);
    if single {
        Reply::json(200, json!({"room": rooms[0], "delivered": delivered[0]}))
    } else {
        let results: Vec<Value> = rooms
            .iter()
            .zip(&delivered)
            .map(|(r, n)| json!({"room": r, "delivered": n}))
            .collect();
        Reply::json(
            200,
            json!({"delivered": delivered.iter().sum::<usize>(), "results": results}),
        )
    }
}

/// `?local=1`: deliver to this node's members only, without the broker (a clustered node
/// answers 503 for any other publish while its broker is down).
fn local_only(head: &RequestHead) -> bool {
    head.query_param("local")
        .is_some_and(|v| v == "1" || v == "true")
}

/// The publish API on a clustered node: every item is published on the broker, which every
/// node (this one included) reads back and fans out; the answer comes once the broker
/// confirmed each, with the number of nodes that had members (`nodes`). A broker that is down
/// or does not confirm in time is a 503 naming it; earlier items of a batch may have gone out.
async fn publish_cluster(
    shard: &std::rc::Rc<Shard>,
    items: Vec<(String, Bytes)>,
    single: bool,
    started: Instant,
) -> Reply {
    match super::cluster::publish(shard, &items).await {
        Ok(nodes) => {
            shard
                .probe
                .publish_latency(started.elapsed().as_nanos() as u64);
            Probe::inc(&shard.probe.publishes, items.len() as u64);
            if single {
                Reply::json(200, json!({"room": items[0].0, "nodes": nodes[0]}))
            } else {
                let results: Vec<Value> = items
                    .iter()
                    .zip(&nodes)
                    .map(|((r, _), n)| json!({"room": r, "nodes": n}))
                    .collect();
                Reply::json(200, json!({"published": items.len(), "results": results}))
            }
        }
        Err((why, broker)) => {
            let mut r = Reply::json(
                503,
                json!({
                    "error": "broker unavailable",
                    "broker": broker,
                    "reason": why.label(),
                }),
            );
            r.extra.push(("Retry-After", "1".to_owned()));
            r
        }
    }
}
