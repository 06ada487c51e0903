//! Authorization hooks: questions the protocol puts to the app's backend ("is this user a
//! participant of this conversation?") at a handshake or HTTP request. The accepting shard
//! asks through the shard's backend client (`backend.rs`: kept-alive HTTP/1.1 connections)
//! within the hook's timeout, so a slow backend delays only the socket that asked, never the
//! shard.
//! Answers may be cached per shard for the hook's TTL. Anything but a clear answer fails
//! closed with the hook's `unavailable` close.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::backend;
use super::shard::Shard;
use crate::auth::Identity;
use crate::protocol::{CloseId, Cond, HookId, PathPattern, Protocol, Rule};

/// Cached answers kept per shard before expired ones are swept.
const CACHE_SWEEP_AT: usize = 65_536;

/// This shard's hook state: the backend it asks and the answers it cached. One per shard
/// thread, made on first use; only that shard's tasks touch it.
struct Local {
    cache: std::cell::RefCell<HookCache>,
}

thread_local! {
    static LOCAL: std::cell::OnceCell<std::rc::Rc<Local>> = const { std::cell::OnceCell::new() };
}

fn local() -> std::rc::Rc<Local> {
    LOCAL.with(|l| {
        l.get_or_init(|| {
            std::rc::Rc::new(Local {
                cache: Default::default(),
            })
        })
        .clone()
    })
}

/// What a hook said. Owned by the shard that asked (cached there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Admitted, with what the backend knows about the caller (often nothing).
    Allow(Facts),
    /// Refused; the backend may name the close to use.
    Deny(Option<String>),
    Unavailable,
}

/// Cached hook answers. Owned by its shard.
#[derive(Debug, Default)]
pub struct HookCache {
    entries: HashMap<String, (Instant, Answer)>,
}

impl HookCache {
    fn get(&mut self, key: &str, now: Instant) -> Option<Answer> {
        match self.entries.get(key) {
            Some((exp, a)) if *exp > now => Some(a.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: String, until: Instant, a: Answer) {
        if self.entries.len() >= CACHE_SWEEP_AT {
            let now = Instant::now();
            self.entries.retain(|_, (exp, _)| *exp > now);
            if self.entries.len() >= CACHE_SWEEP_AT {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (until, a));
    }
}

/// Why authorization refused: the close to use (an HTTP endpoint maps it to 403 or 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub close: CloseId,
    pub unavailable: bool,
}

/// Who is asking for what, as the hook's request body describes it.
pub struct Subject<'a> {
    pub endpoint: &'a str,
    pub path: &'a PathPattern,
    pub params: &'a [String],
    pub identity: Option<&'a Identity>,
}

enum Verdict {
    Allow,
    Deny(Option<CloseId>),
    Unavailable(CloseId),
}

/// Facts hooks answered with (`{"allow": true, "facts": {"role": "therapist"}}`): what the
/// backend knows about the caller here, which a stock token does not say. Claim conditions
/// after the hook read them as claims, and the caller merges them into the identity
/// ([`merge_facts`]). Owned by the task that authorizes.
pub type Facts = Map<String, Value>;

/// Evaluates rules in order; the first that fails refuses with its close (or the close the
/// backend named). On success, the facts the hooks that allowed answered with.
pub async fn authorize(shard: &Shard, rules: &[Rule], who: &Subject<'_>) -> Result<Facts, Refusal> {
    let facts = RefCell::new(Facts::new());
    for rule in rules {
        match eval(shard, &rule.cond, who, &facts).await {
            Verdict::Allow => {}
            Verdict::Deny(c) => {
                return Err(Refusal {
                    close: c.unwrap_or(rule.deny),
                    unavailable: false,
                })
            }
            Verdict::Unavailable(c) => {
                return Err(Refusal {
                    close: c,
                    unavailable: true,
                })
            }
        }
    }
    Ok(facts.into_inner())
}

/// Adds hook facts to the caller's claims, replacing a claim of the same name: the backend's
/// answer is about this resource and current, a token's claim was written when it was issued
/// (a token saying `role = "therapist"` for a user the database has as this pair's customer
/// is the customer here).
pub fn merge_facts(claims: &mut Map<String, Value>, facts: Facts) {
    claims.extend(facts);
}

fn eval<'a>(
    shard: &'a Shard,
    c: &'a Cond,
    who: &'a Subject<'a>,
    facts: &'a RefCell<Facts>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + 'a>> {
    Box::pin(async move {
        match c {
            Cond::Hook(h) => ask(shard, *h, who, facts).await,
            Cond::AllOf(cs) => {
                for c in cs {
                    match eval(shard, c, who, facts).await {
                        Verdict::Allow => {}
                        other => return other,
                    }
                }
                Verdict::Allow
            }
            Cond::AnyOf(cs) => {
                // Any alternative admits; otherwise an unavailable backend wins over a plain
                // "no" (fail closed, but say why), and a named close over an unnamed one.
                let mut worst = Verdict::Deny(None);
                for c in cs {
                    match eval(shard, c, who, facts).await {
                        Verdict::Allow => return Verdict::Allow,
                        Verdict::Unavailable(x) => worst = Verdict::Unavailable(x),
                        Verdict::Deny(Some(x)) if matches!(worst, Verdict::Deny(None)) => {
                            worst = Verdict::Deny(Some(x))
                        }
                        Verdict::Deny(_) => {}
                    }
                }
                worst
            }
            other => {
                let facts = facts.borrow();
                let merged;
                let claims = match who.identity {
                    Some(i) if !facts.is_empty() => {
                        let mut c = i.claims.clone();
                        merge_facts(&mut c, facts.clone());
                        merged = c;
                        Some(&merged)
                    }
                    Some(i) => Some(&i.claims),
                    None => None,
                };
                if other.eval_claims(claims, who.params) {
                    Verdict::Allow
                } else {
                    Verdict::Deny(None)
                }
            }
        }
    })
}

async fn ask(shard: &Shard, hook_id: HookId, who: &Subject<'_>, facts: &RefCell<Facts>) -> Verdict {
    let proto: &Protocol = &shard.shared.proto;
    let hook = &proto.hooks[hook_id];
    let mut path = Map::new();
    for (spec, v) in who.path.params.iter().zip(who.params) {
        path.insert(spec.name.clone(), Value::String(v.clone()));
    }
    // As forwards send it: a number when the id is one, else text.
    let user_id = who
        .identity
        .map(|i| crate::message::id_value(i.user_id.as_str()))
        .unwrap_or(Value::Null);
    let key = format!(
        "{}\u{0}{}\u{0}{}\u{0}{}",
        hook.name,
        who.endpoint,
        who.params.join("\u{0}"),
        who.identity.map(|i| i.user_id.as_str()).unwrap_or("")
    );
    let local = local();
    let cached = local.cache.borrow_mut().get(&key, Instant::now());
    let answer = match cached {
        Some(a) => a,
        None => {
            let body = json!({
                "endpoint": who.endpoint,
                "path": path,
                "user_id": user_id,
                "claims": who.identity.map(|i| Value::Object(i.claims.clone())).unwrap_or(Value::Null),
            });
            let a = call(shard, &hook.path, hook.timeout_ms, &body).await;
            if hook.cache_ttl_ms > 0 && a != Answer::Unavailable {
                let until = Instant::now() + Duration::from_millis(hook.cache_ttl_ms);
                local.cache.borrow_mut().put(key, until, a.clone());
            }
            a
        }
    };
    match answer {
        Answer::Allow(known) => {
            facts.borrow_mut().extend(known);
            Verdict::Allow
        }
        Answer::Deny(name) => {
            Verdict::Deny(name.and_then(|n| proto.closes.iter().position(|c| c.name == n)))
        }
        Answer::Unavailable => {
            tracing::warn!(hook = %hook.name, "backend hook unavailable; refusing");
            Verdict::Unavailable(hook.unavailable)
        }
    }
}

/// One POST to the backend within `timeout_ms`; anything unclear is `Unavailable`.
async fn call(shard: &Shard, path: &str, timeout_ms: u64, body: &Value) -> Answer {
    let body = body.to_string();
    match backend::post(
        shard,
        path,
        body.as_bytes(),
        Duration::from_millis(timeout_ms),
    )
    .await
    {
        backend::Outcome::Answered(status, body) => interpret(status, &body),
        backend::Outcome::Failed | backend::Outcome::Overloaded => Answer::Unavailable,
    }
}

/// The hook contract: `200 {"allow": true}` admits (with `"facts": {...}`, what the backend
/// knows about the caller); `200 {"allow": false, "close": name}` or
/// 403 refuses; anything else (5xx, other statuses, unreadable JSON) is unavailable.
pub fn interpret(status: u16, body: &[u8]) -> Answer {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let close = || {
        v.as_ref()
            .and_then(|v| v.get("close"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match status {
        200 => match v
            .as_ref()
            .and_then(|v| v.get("allow"))
            .and_then(Value::as_bool)
        {
            Some(true) => match v.as_ref().and_then(|v| v.get("facts")) {
                None | Some(Value::Null) => Answer::Allow(Facts::new()),
                Some(Value::Object(f)) => Answer::Allow(f.clone()),
                Some(_) => Answer::Unavailable,
            },
            Some(false) => Answer::Deny(close()),
            None => Answer::Unavailable,
        },
        403 => Answer::Deny(close()),
        _ => Answer::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(
            interpret(200, br#"{"allow":true}"#),
            Answer::Allow(Facts::new())
        );
        let with_facts = interpret(200, br#"{"allow":true,"facts":{"role":"therapist"}}"#);
        assert_eq!(
            with_facts,
            Answer::Allow(json!({"role": "therapist"}).as_object().unwrap().clone())
        );
        assert_eq!(
            interpret(200, br#"{"allow":true,"facts":[1]}"#),
            Answer::Unavailable
        );
        assert_eq!(
            interpret(200, br#"{"allow":false,"close":"no_access"}"#),
            Answer::Deny(Some("no_access".into()))
        );
        assert_eq!(interpret(403, b""), Answer::Deny(None));
        assert_eq!(interpret(200, b"yes"), Answer::Unavailable);
        assert_eq!(interpret(500, br#"{"allow":true}"#), Answer::Unavailable);
        assert_eq!(interpret(404, b""), Answer::Unavailable);
    }
}
