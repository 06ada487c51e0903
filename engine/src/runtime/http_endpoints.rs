//! HTTP endpoints a protocol declares (`[[http]]`): authenticate the caller's bearer token,
//! authorize (claims and hooks), limit the caller's rate, validate the JSON body, then mint a
//! token and/or broadcast a message to a room, and answer with a templated JSON body.
//! Exists on every shard: whichever shard accepted the request serves it; the rate limit of a
//! caller lives on the shard that owns its key, so it holds across shards.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

use super::hook::{self, Subject};
use super::msg::ShardMsg;
use super::router::{self, Dest, Traffic};
use super::shard::Shard;
use crate::message::{self, RenderCtx};
use crate::protocol::{HttpEndpoint, HttpMethod, ParamError, Rate};
use crate::token_bucket::TokenBucket;
use crate::ws::http::{Method, RequestHead};
use crate::ws::http_error::{retry_after_s, HttpError, HttpErrorKind};
use HttpErrorKind::{BadRequest, Forbidden, Internal, NotFound, Unauthorized};

/// Buckets kept before idle (full) ones are swept.
const LIMITER_SWEEP_AT: usize = 100_000;

/// Per-caller token buckets for HTTP endpoints. Owned by the shard that owns each key.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<String, TokenBucket>,
}

impl Limiter {
    /// Takes one request from `key`'s bucket at `now_ms`; `Err(ms)` says how long until one
    /// is available.
    pub fn take(&mut self, key: &str, rate: Rate, now_ms: u64) -> Result<(), u64> {
        if self.buckets.len() >= LIMITER_SWEEP_AT {
            self.buckets.retain(|_, b| !b.is_full(rate, now_ms));
        }
        self.buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::full(rate, now_ms))
            .take(rate, now_ms)
    }
}

/// Serves a request if a declared endpoint matches its path (`None`: not ours), with the JSON
/// body of the 200 or the error it is refused with.
pub async fn serve(
    shard: &Rc<Shard>,
    head: &RequestHead,
    body: &[u8],
) -> Option<Result<Value, HttpError>> {
    let proto = shard.shared.proto.clone();
    let mut path_matched = None;
    let mut found = None;
    for ep in &proto.http {
        let Some(m) = ep.path.matches(&head.path) else {
            continue;
        };
        let method_ok = matches!(
            (ep.method, &head.method),
            (HttpMethod::Get, Method::Get) | (HttpMethod::Post, Method::Post)
        );
        if method_ok {
            found = Some((ep, m));
            break;
        }
        path_matched = Some(ep.method);
    }
    let Some((ep, params)) = found else {
        let allow = match path_matched? {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        };
        return Some(Err(HttpError::new(
            HttpErrorKind::MethodNotAllowed { allow },
            "method not allowed",
        )));
    };
    let params = match params {
        Ok(p) => p,
        Err(ParamError::Empty) => {
            return Some(Err(HttpError::new(NotFound, "missing path parameter")))
        }
        Err(_) => {
            return Some(Err(HttpError::new(
                NotFound,
                "path parameter is not valid for this endpoint",
            )))
        }
    };
    Some(handle(shard, ep, params, head, body).await)
}

async fn handle(
    shard: &Rc<Shard>,
    ep: &HttpEndpoint,
    params: Vec<String>,
    head: &RequestHead,
    body: &[u8],
) -> Result<Value, HttpError> {
    let proto = &shard.shared.proto;
    let identity = if ep.tokens.is_empty() {
        None
    } else {
        let verified = match head.bearer_token() {
            None => Err("authentication credentials were not provided"),
            Some(t) => {
                let now = super::shared::unix_ms() / 1000;
                crate::auth::verify_any(&shard.shared.verifiers, &ep.tokens, t, now)
                    .map_err(|_| "token is invalid or expired")
            }
        };
        Some(verified.map_err(|msg| HttpError::new(Unauthorized, msg))?)
    };
    let who = Subject {
        endpoint: &ep.name,
        path: &ep.path,
        params: &params,
        identity: identity.as_ref(),
    };
    let facts = match hook::authorize(shard, &ep.authorize, &who).await {
        Ok(facts) => facts,
        Err(r) => {
            let kind = if r.unavailable {
                HttpErrorKind::Overloaded { retry_after_s: 1 }
            } else {
                Forbidden
            };
            return Err(HttpError::new(kind, proto.closes[r.close].reason.clone()));
        }
    };
    let mut identity = identity;
    if let Some(id) = identity.as_mut() {
        hook::merge_facts(&mut id.claims, facts);
    }
    if let (Some(rate), Some(id)) = (ep.rate, identity.as_ref()) {
        let key = format!("{}\u{0}{}", ep.name, id.user_id.as_str());
        if let Err(wait_ms) = take(shard, key, rate).await {
            let retry_after_s = retry_after_s(wait_ms);
            return Err(HttpError::new(
                HttpErrorKind::TooManyRequests { retry_after_s },
                "rate limit exceeded",
            ));
        }
    }
    let inbound = match ep.body {
        None => None,
        Some(msg) => {
            let obj = match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(o)) => o,
                Ok(_) => return Err(HttpError::new(BadRequest, "body must be a JSON object")),
                Err(_) => return Err(HttpError::new(BadRequest, "body is not valid JSON")),
            };
            if let Err(e) = message::check(&proto.messages[msg].schema, &obj, "") {
                return Err(HttpError::new(BadRequest, e.describe()));
            }
            Some(obj)
        }
    };
    let now_ms = super::shared::unix_ms();
    let mut ids = shard.ids.borrow_mut();
    let mut next = || ids.next_id();
    let mut ctx = RenderCtx {
        params: &params,
        param_names: &[],
        claims: identity.as_ref().map(|i| &i.claims),
        user_id: identity.as_ref().map(|i| i.user_id.as_str()),
        inbound: inbound.as_ref().map(|m| m as &dyn message::Fields),
        now_ms,
        next_id: &mut next,
        geo: None,
        minted: None,
    };
    let minted = match &ep.mint {
        None => None,
        Some(m) => {
            let mut claims = Map::new();
            for (k, t) in &m.with {
                ctx.insert(&mut claims, k, t);
            }
            let signed = shard.shared.verifiers[m.token]
                .signer()
                .map(|s| s.issue(claims, now_ms / 1000, m.ttl_s));
            match signed {
                Some(Ok(t)) => Some(t),
                _ => return Err(HttpError::new(Internal, "this token kind cannot be minted")),
            }
        }
    };
    ctx.minted = minted.as_deref();
    let mut delivery = None;
    if let Some(a) = &ep.broadcast {
        let base = match (a.forward, ep.body, inbound.as_ref()) {
            (true, Some(b), Some(obj)) => {
                Some(message::declared_fields(&proto.messages[b].schema, obj))
            }
            _ => None,
        };
        let frame = match &a.frame {
            Some(f) => f.text_frame(&mut ctx),
            None => crate::session::encode(&message::build(
                &proto.messages[a.send],
                base,
                &a.with,
                &mut ctx,
            )),
        };
        let room = a.room.as_ref().map(|r| ctx.string(r)).unwrap_or_default();
        delivery = Some((room, frame));
    }
    let mut out = Map::new();
    for (k, t) in &ep.respond {
        ctx.insert(&mut out, k, t);
    }
    drop(ids);
    if let Some((room, frame)) = delivery {
        router::deliver(shard, &room, frame, None, Traffic::Broadcast);
    }
    Ok(Value::Object(out))
}

/// Takes from the caller's bucket on the shard that owns the key.
async fn take(shard: &Rc<Shard>, key: String, rate: Rate) -> Result<(), u64> {
    let owner = match router::dest(shard, &key) {
        Dest::Here => return take_here(&key, rate),
        Dest::Shard(owner) => owner,
    };
    let (tx, rx) = futures::channel::oneshot::channel();
    let msg = ShardMsg::Run(Box::new(move || {
        let _ = tx.send(take_here(&key, rate));
    }));
    if router::send(shard, owner, msg, Traffic::RateCheck)
        .await
        .is_err()
    {
        // The owner is overloaded: refuse rather than skip the limit.
        return Err(1000);
    }
    rx.await.unwrap_or(Err(1000))
}

thread_local! {
    /// The buckets of the callers whose key this shard owns. One per shard thread; only that
    /// shard takes from them.
    static LIMITS: std::cell::RefCell<Limiter> = std::cell::RefCell::new(Limiter::default());
}

/// Takes from a bucket this shard owns.
fn take_here(key: &str, rate: Rate) -> Result<(), u64> {
    LIMITS.with(|l| l.borrow_mut().take(key, rate, super::shared::unix_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_two_seconds() {
        let rate = Rate {
            per_second: 0.5,
            burst: 1,
        };
        let mut l = Limiter::default();
        assert_eq!(l.take("a", rate, 10_000), Ok(()));
        assert_eq!(l.take("a", rate, 10_500), Err(1500));
        assert_eq!(l.take("b", rate, 10_500), Ok(()));
        assert_eq!(l.take("a", rate, 12_000), Ok(()));
        assert!(l.take("a", rate, 12_001).is_err());
    }
}
