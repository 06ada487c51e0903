//! The app backend over HTTP/1.1: the one client that hooks and forwards use. Exists on every
//! shard: each shard keeps its own few kept-alive connections to the backend and its own cap
//! on requests in flight, so no lock is taken and a slow backend costs only the tasks that
//! wait on it, never the shard (requests run in their callers' tasks, raced against a timer).
//!
//! The backend host is resolved once at startup (`Backend::resolve`), never on a shard.

use std::cell::{Cell, OnceCell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::fd::{self, OwnedSocket};
use super::probe::Probe;
use super::shard::Shard;

/// Largest backend answer read; hook answers are a few bytes, forward answers a message.
pub const MAX_ANSWER: usize = 256 * 1024;
/// Kept-alive connections per shard; more idle ones are closed.
const MAX_IDLE: usize = 16;
/// An idle connection older than this is closed rather than reused: servers close idle
/// keep-alive connections after a few seconds (uvicorn 5 s, gunicorn 2 s), and a request on
/// one they closed has to be sent again.
const IDLE_KEEP: Duration = Duration::from_secs(4);

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

/// How one request to the backend ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered: status and body.
    Answered(u16, Vec<u8>),
    /// Nothing usable came back in time: no backend address, a refused or reset connection,
    /// the timeout, an answer that is not HTTP or is too large.
    Failed,
    /// The shard already had its cap of requests in flight: not sent.
    Overloaded,
}

/// This shard's client: the backend's address, its idle connections, the requests out.
/// Exists on every shard (one per shard thread, made on first use).
struct Client {
    target: Option<(SocketAddr, Backend)>,
    /// Detached descriptors, so a connection left in the pool at shutdown closes without
    /// the reactor; newest last.
    idle: RefCell<Vec<(Instant, OwnedSocket)>>,
    in_flight: Cell<usize>,
    max_in_flight: usize,
}

thread_local! {
    static CLIENT: OnceCell<Rc<Client>> = const { OnceCell::new() };
}

fn client(shard: &Shard) -> Rc<Client> {
    CLIENT.with(|c| {
        c.get_or_init(|| {
            let config = &shard.shared.config;
            Rc::new(Client {
                target: Backend::for_shard(&config.backend_url, config.backend_addr),
                idle: RefCell::new(Vec::new()),
                in_flight: Cell::new(0),
                max_in_flight: config.backend_max_in_flight,
            })
        })
        .clone()
    })
}

/// Counts a request out for as long as it lives (including when its caller drops it).
struct InFlight(Rc<Client>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

/// `POST <backend><path>` with a JSON body, within `timeout`: on a kept-alive connection
/// when one is idle, else on a new one. A kept-alive connection the backend closed meanwhile
/// (nothing comes back on it) costs one more try on a new connection, inside the same timeout.
pub async fn post(shard: &Shard, path: &str, body: &[u8], timeout: Duration) -> Outcome {
    let c = client(shard);
    let Some((addr, backend)) = c.target.clone() else {
        return Outcome::Failed;
    };
    if c.in_flight.get() >= c.max_in_flight {
        return Outcome::Overloaded;
    }
    c.in_flight.set(c.in_flight.get() + 1);
    let _out = InFlight(c.clone());
    let head = format!(
        "POST {}{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nUser-Agent: beacon\r\n\r\n",
        backend.base,
        path,
        backend.host_header,
        body.len(),
    );
    let probe = &shard.probe;
    let attempt = async {
        if let Some(stream) = c.checkout() {
            match exchange(stream, &head, body).await {
                Ok(done) => return c.finish(done),
                Err(Stale::Yes) => {}
                Err(Stale::No) => return None,
            }
        }
        let stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        Probe::inc(&probe.backend_connects, 1);
        c.finish(exchange(stream, &head, body).await.ok()?)
    };
    let attempt = pin!(attempt);
    let timer = pin!(glommio::timer::Timer::new(timeout));
    match futures::future::select(attempt, timer).await {
        futures::future::Either::Left((Some((status, body)), _)) => Outcome::Answered(status, body),
        _ => Outcome::Failed,
    }
}

impl Client {
    fn checkout(&self) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        idle.retain(|(at, _)| now.duration_since(*at) < IDLE_KEEP);
        idle.pop().map(|(_, s)| fd::attach(s))
    }

    /// Puts a connection the answer left reusable back in the pool; returns the answer.
    fn finish(&self, done: Exchanged) -> Option<(u16, Vec<u8>)> {
        if let Some(stream) = done.reusable {
            let mut idle = self.idle.borrow_mut();
            if idle.len() < MAX_IDLE {
                if let Ok(s) = fd::detach(stream) {
                    idle.push((Instant::now(), s));
                }
            }
        }
        Some((done.status, done.body))
    }
}

struct Exchanged {
    status: u16,
    body: Vec<u8>,
    /// The connection, when the answer ended cleanly and the backend keeps it open.
    reusable: Option<TcpStream>,
}

/// Whether a failed exchange may be sent again on a new connection: only when not one byte
/// of an answer came back on a kept-alive connection (the backend closed it while idle).
enum Stale {
    Yes,
    No,
}

async fn exchange(mut stream: TcpStream, head: &str, body: &[u8]) -> Result<Exchanged, Stale> {
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body).await.is_err() {
        return Err(Stale::Yes);
    }
    let mut buf = Vec::with_capacity(1024);
    // The head.
    let (status, framing, keep_alive, head_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.ok_or(Stale::No)?;
                if (100..200).contains(&status) {
                    // An interim answer (100 Continue): the real one follows.
                    buf.drain(..n);
                    continue;
                }
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::trim)
                };
                let framing = if status == 204 || status == 304 {
                    Framing::Length(0)
                } else if header("transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
                {
                    Framing::Chunked
                } else if let Some(len) = header("content-length") {
                    Framing::Length(len.parse().map_err(|_| Stale::No)?)
                } else {
                    Framing::ToEof
                };
                let keep_alive = resp.version == Some(1)
                    && !header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                break (status, framing, keep_alive, n);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(Stale::No),
        }
        if buf.len() > MAX_ANSWER {
            return Err(Stale::No);
        }
        if read(&mut stream, &mut buf).await.is_err() {
            // Nothing at all came back: the backend closed a kept-alive connection.
            return Err(if buf.is_empty() {
                Stale::Yes
            } else {
                Stale::No
            });
        }
    };
    buf.drain(..head_len);
    let body = match framing {
        Framing::Length(len) => {
            if len > MAX_ANSWER {
                return Err(Stale::No);
            }
            while buf.len() < len {
                read(&mut stream, &mut buf).await.map_err(|_| Stale::No)?;
            }
            let rest = buf.split_off(len);
            if !rest.is_empty() {
                // More than the answer: nothing else is owed on this connection.
                return Ok(Exchanged {
                    status,
                    body: buf,
                    reusable: None,
                });
            }
            buf
        }
        Framing::Chunked => loop {
            match dechunk(&buf) {
                Dechunked::Done(body, used) if used == buf.len() => break body,
                Dechunked::Done(body, _) => {
                    return Ok(Exchanged {
                        status,
                        body,
                        reusable: None,
                    })
                }
                Dechunked::Partial => {}
                Dechunked::Bad => return Err(Stale::No),
            }
            if buf.len() > MAX_ANSWER + 64 * 1024 {
                return Err(Stale::No);
            }
            read(&mut stream, &mut buf).await.map_err(|_| Stale::No)?;
        },
        Framing::ToEof => {
            while read(&mut stream, &mut buf).await.is_ok() {
                if buf.len() > MAX_ANSWER {
                    return Err(Stale::No);
                }
            }
            return Ok(Exchanged {
                status,
                body: buf,
                reusable: None,
            });
        }
    };
    Ok(Exchanged {
        status,
        body,
        reusable: keep_alive.then_some(stream),
    })
}

/// Reads what the backend sent next onto `buf`; `Err` at the end of the stream or on an error.
async fn read(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.map_err(|_| ())?;
    if n == 0 {
        return Err(());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

enum Framing {
    Length(usize),
    Chunked,
    ToEof,
}

#[derive(Debug, PartialEq, Eq)]
enum Dechunked {
    /// The body, and how many bytes of the input the chunked encoding used.
    Done(Vec<u8>, usize),
    Partial,
    Bad,
}

/// Decodes a complete `Transfer-Encoding: chunked` body (RFC 9112 7.1); trailers are skipped.
fn dechunk(mut input: &[u8]) -> Dechunked {
    let total = input.len();
    let mut body = Vec::new();
    loop {
        let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
            return if input.len() > 1024 {
                Dechunked::Bad
            } else {
                Dechunked::Partial
            };
        };
        let size_text = std::str::from_utf8(&input[..eol]).unwrap_or("");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Dechunked::Bad;
        };
        if size > MAX_ANSWER {
            return Dechunked::Bad;
        }
        input = &input[eol + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
                    return Dechunked::Partial;
                };
                input = &input[eol + 2..];
                if eol == 0 {
                    return Dechunked::Done(body, total - input.len());
                }
            }
        }
        if input.len() < size + 2 {
            return Dechunked::Partial;
        }
        if &input[size..size + 2] != b"\r\n" {
            return Dechunked::Bad;
        }
        body.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
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
    fn chunked_bodies() {
        let whole = b"4\r\nWiki\r\n6;x=1\r\npedia \r\n0\r\n\r\n";
        assert_eq!(
            dechunk(whole),
            Dechunked::Done(b"Wikipedia ".to_vec(), whole.len())
        );
        // Every proper prefix is partial, never wrong.
        for n in 0..whole.len() {
            assert_eq!(dechunk(&whole[..n]), Dechunked::Partial, "prefix {n}");
        }
        let trailers = b"1\r\na\r\n0\r\nX-T: 1\r\n\r\nextra";
        assert_eq!(
            dechunk(trailers),
            Dechunked::Done(b"a".to_vec(), trailers.len() - 5)
        );
        assert_eq!(dechunk(b"zz\r\n"), Dechunked::Bad);
        assert_eq!(dechunk(b"2\r\nabc\r\n"), Dechunked::Bad);
    }
}
