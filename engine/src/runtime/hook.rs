//! Authorization hooks: questions the protocol puts to the app's backend ("is this user a
//! participant of this conversation?") at a handshake or HTTP request. The accepting shard
//! asks over a non-blocking glommio socket (HTTP/1.1, one request per connection) within the
//! hook's timeout, so a slow backend delays only the socket that asked, never the shard.
//! Answers may be cached per shard for the hook's TTL. Anything but a clear answer fails
//! closed with the hook's `unavailable` close.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde_json::{json, Map, Value};

use super::shard::Shard;
use crate::auth::Identity;
use crate::protocol::{CloseId, Cond, HookId, PathPattern, Protocol, Rule};

/// Largest backend answer read; an authorization answer is a few bytes.
const MAX_ANSWER: usize = 64 * 1024;
/// Cached answers kept per shard before expired ones are swept.
const CACHE_SWEEP_AT: usize = 65_536;

/// Where the backend lives, parsed from `http://host[:port][/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub host_header: String,
    pub host: String,
    pub port: u16,
    pub base: String,
}

impl Backend {
    pub fn parse(url: &str) -> Result<Backend, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("backend URL `{url}` must start with http://"))?;
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("backend URL `{url}` has a bad port"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("backend URL `{url}` has no host"));
        }
        Ok(Backend {
            host_header: authority.to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            base: base.to_owned(),
        })
    }

    /// Resolves the host (blocking: call at startup only).
    pub fn resolve(&self) -> Option<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .ok()?
            .next()
    }

    /// The backend for a shard: the address resolved at startup, else an IP literal (no name
    /// resolution on a shard thread).
    pub fn for_shard(url: &str, resolved: Option<SocketAddr>) -> Option<(SocketAddr, Backend)> {
        let b = Backend::parse(url).ok()?;
        let addr = resolved.or_else(|| {
            let ip: std::net::IpAddr = if b.host == "localhost" {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                b.host.parse().ok()?
            };
            Some(SocketAddr::new(ip, b.port))
        })?;
        Some((addr, b))
    }
}

/// This shard's hook state: the backend it asks and the answers it cached. One per shard
/// thread, made on first use; only that shard's tasks touch it.
struct Local {
    cache: std::cell::RefCell<HookCache>,
    backend: Option<(SocketAddr, Backend)>,
}

thread_local! {
    static LOCAL: std::cell::OnceCell<std::rc::Rc<Local>> = const { std::cell::OnceCell::new() };
}

fn local(shard: &Shard) -> std::rc::Rc<Local> {
    LOCAL.with(|l| {
        l.get_or_init(|| {
            let config = &shard.shared.config;
            std::rc::Rc::new(Local {
                cache: Default::default(),
                backend: Backend::for_shard(&config.backend_url, config.backend_addr),
            })
        })
        .clone()
    })
}

/// What a hook said. Owned by the shard that asked (cached there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allow,
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

/// Evaluates rules in order; the first that fails refuses with its close (or the close the
/// backend named).
pub async fn authorize(shard: &Shard, rules: &[Rule], who: &Subject<'_>) -> Result<(), Refusal> {
    for rule in rules {
        match eval(shard, &rule.cond, who).await {
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
    Ok(())
}

fn eval<'a>(
    shard: &'a Shard,
    c: &'a Cond,
    who: &'a Subject<'a>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + 'a>> {
    Box::pin(async move {
        let claims = who.identity.map(|i| &i.claims);
        match c {
            Cond::Hook(h) => ask(shard, *h, who).await,
            Cond::AllOf(cs) => {
                for c in cs {
                    match eval(shard, c, who).await {
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
                    match eval(shard, c, who).await {
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
                if other.eval_claims(claims, who.params) {
                    Verdict::Allow
                } else {
                    Verdict::Deny(None)
                }
            }
        }
    })
}

async fn ask(shard: &Shard, hook_id: HookId, who: &Subject<'_>) -> Verdict {
    let proto: &Protocol = &shard.shared.proto;
    let hook = &proto.hooks[hook_id];
    let mut path = Map::new();
    for (spec, v) in who.path.params.iter().zip(who.params) {
        path.insert(spec.name.clone(), Value::String(v.clone()));
    }
    let user_id = who
        .identity
        .map(|i| Value::String(i.user_id.as_str().to_owned()))
        .unwrap_or(Value::Null);
    let key = format!(
        "{}\u{0}{}\u{0}{}\u{0}{}",
        hook.name,
        who.endpoint,
        who.params.join("\u{0}"),
        who.identity.map(|i| i.user_id.as_str()).unwrap_or("")
    );
    let local = local(shard);
    let cached = local.cache.borrow_mut().get(&key, Instant::now());
    let answer = match cached {
        Some(a) => a,
        None => {
            let body = json!({
                "endpoint": who.endpoint,
                "path": path,
                "user_id": who.identity.and_then(|i| i.claims.get("user_id").cloned()).unwrap_or(user_id),
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
        Answer::Allow => Verdict::Allow,
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
    let local = local(shard);
    let Some((addr, backend)) = local.backend.as_ref() else {
        return Answer::Unavailable;
    };
    let body = body.to_string();
    let request = format!(
        "POST {}{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: beacon\r\n\r\n{}",
        backend.base,
        path,
        backend.host_header,
        body.len(),
        body
    );
    let deadline = Duration::from_millis(timeout_ms);
    let exchange = pin!(exchange(*addr, request));
    let timer = pin!(glommio::timer::Timer::new(deadline));
    match futures::future::select(exchange, timer).await {
        futures::future::Either::Left((Some((status, body)), _)) => interpret(status, &body),
        _ => Answer::Unavailable,
    }
}

async fn exchange(addr: SocketAddr, request: String) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = resp.parse(&buf) {
            let status = resp.code?;
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                });
            if let Some(len) = len {
                if len > MAX_ANSWER {
                    return None;
                }
                while buf.len() < head_len + len {
                    let n = stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Some((status, buf[head_len..head_len + len].to_vec()));
            }
            // No length: the body runs to EOF (we asked for Connection: close).
            loop {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return Some((status, buf[head_len..].to_vec()));
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_ANSWER + head_len {
                    return None;
                }
            }
        }
        if buf.len() > MAX_ANSWER {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The hook contract: `200 {"allow": true}` admits; `200 {"allow": false, "close": name}` or
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
            Some(true) => Answer::Allow,
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
    fn backend_urls() {
        let b = Backend::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.base.as_str()),
            ("127.0.0.1", 8000, "")
        );
        let b = Backend::parse("http://api.internal/app/").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.base.as_str()),
            ("api.internal", 80, "/app")
        );
        assert_eq!(b.host_header, "api.internal");
        let b = Backend::parse("http://[::1]:9000").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 9000));
        assert!(Backend::parse("https://x").is_err());
        assert!(Backend::parse("http://:80").is_err());
        assert!(Backend::parse("http://h:notaport").is_err());
    }

    #[test]
    fn answers() {
        assert_eq!(interpret(200, br#"{"allow":true}"#), Answer::Allow);
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
