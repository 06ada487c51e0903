//! `beacon-load`: the benchmarks' load generator. Real sockets on loopback, open-loop at a fixed
//! rate (a stalled server shows up as latency, not as a politely slower client), latency from a
//! timestamp carried in every message, HdrHistogram for the percentiles, and the server's CPU
//! seconds and memory read from /proc.
//!
//! It speaks the booking protocol every peer under `benches/peers/` serves:
//! `/ws/bookings/{id}/?token=JWT`, `{"type":"ping","t":N}` answered by a pong carrying `t`, and
//! `POST /api/publish` of a `location_update` whose `timestamp` carries the send time, and a
//! client `location_update` that the server broadcasts to the rest of the sender's room.
//!
//! Single-threaded on purpose: `benches/run.sh` pins it to its own core, and it reports its own
//! CPU use so a saturated load generator is flagged instead of blamed on the server.

mod proc_stat;
mod raw;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::LocalSet;
use tokio_tungstenite::WebSocketStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Round trips: each connection sends pings at its share of `--rate`.
    Echo,
    /// `--rate` publishes per second over HTTP, each to one of `--rooms` rooms (round robin);
    /// every subscriber records each delivery.
    Broadcast,
    /// Opens `--conns` sockets and holds them: server memory per connection.
    Idle,
    /// Handshakes per second: `--conns` workers connect, wait for the first message, close.
    Storm,
    /// One room of `--conns` subscribers; `--publishers` publishers send `--rate` location
    /// updates per second into it (`--publish-via`), each delivered to every subscriber. Also
    /// reports what was not delivered by the end of the drain.
    BusyRoom,
}

/// How the busy room's publishers reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PublishVia {
    /// A client `location_update` on a WebSocket of the room (the server skips the sender).
    Ws,
    /// `POST /api/publish`, pipelined on keep-alive connections so the schedule stays open loop.
    Http,
}

#[derive(Parser, Debug)]
#[command(
    name = "beacon-load",
    about = "Open-loop WebSocket load generator for Beacon's benchmarks"
)]
struct Args {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// More nodes of a cluster for the connections opened while ramping up (comma separated):
    /// connection j goes to the (j mod n)-th of `--addr` and these, so one room's subscribers
    /// are spread over the nodes.
    #[arg(long, value_delimiter = ',')]
    spread_addr: Vec<String>,
    /// Where publish API connections go (broadcast; busy room with `--publish-via http`), when
    /// not `--addr`: another node of a cluster, so every delivery crosses nodes.
    #[arg(long)]
    publish_addr: Option<String>,
    /// WebSocket path; `{id}` is the booking (room) id, `{token}` a fresh access token.
    #[arg(long, default_value = "/ws/bookings/{id}/?token={token}")]
    path: String,
    /// Connections (storm: concurrent workers).
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Rooms the connections are spread over (broadcast; echo uses one room per connection).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Operations per second offered: pings (echo) or publishes (broadcast).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Publishing connections (broadcast, busy-room).
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Busy room: how publishers send.
    #[arg(long, value_enum, default_value_t = PublishVia::Ws)]
    publish_via: PublishVia,
    /// Busy room: seconds after the window for deliveries of its publishes to arrive; what has
    /// not arrived by then is reported as not delivered.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Server process ids whose CPU and memory are reported (comma separated).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// HMAC secret for the access tokens.
    #[arg(long, env = "BEACON_JWT_SECRET")]
    secret: String,
    /// Bearer key for the publish API.
    #[arg(long, env = "BEACON_API_KEY", default_value = "")]
    api_key: String,
    /// Name printed with the result (e.g. the server under test).
    #[arg(long, default_value = "server")]
    label: String,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Opens connections at this many per second, each on its own schedule, instead of in
    /// batches of `connect_concurrency` (0: batches). The handshake percentiles then measure
    /// the server at that arrival rate, not a burst.
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
}

thread_local! {
    /// (connection index, handshake µs) of every connection, for `BENCH_HANDSHAKE_LOG`.
    static HANDSHAKE_LOG: RefCell<Vec<(usize, u64)>> = const { RefCell::new(Vec::new()) };
    /// Time from TCP connect to the `101` (and, for first-message endpoints, the first byte
    /// after it), microseconds, for every connection opened while ramping up.
    static HANDSHAKES: RefCell<Histogram<u64>> =
        RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"));
}

/// Microseconds since the load generator started: every timestamp on the wire is one of these.
fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// The number after `key` (skipping an opening quote), without parsing the JSON: the receive
/// path must cost less than the server's.
fn extract_ts(msg: &[u8], key: &[u8]) -> Option<u64> {
    let at = msg.windows(key.len()).position(|w| w == key)? + key.len();
    // Python's json.dumps writes `"t": 1` (a space after the colon).
    let at = at + msg[at..].iter().take_while(|b| **b == b' ').count();
    let rest = msg[at..].strip_prefix(b"\"").unwrap_or(&msg[at..]);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

fn token(secret: &str, user: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "token_type": "access",
        "exp": now + 3600,
        "iat": now,
        "jti": format!("{user:016x}"),
        "user_id": user + 1,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// Everything the tasks record. Owned by the load generator's single thread.
struct Stats {
    measuring: bool,
    latency: Histogram<u64>,
    /// Per broadcast (keyed by its timestamp): deliveries seen and the slowest one.
    per_publish: HashMap<u64, (u32, u64)>,
    ops: u64,
    sent: u64,
    errors: u64,
    /// Publish API answers (broadcast).
    http_latency: Histogram<u64>,
    http_ok: u64,
    delivered_reported: u64,
    /// How late the load generator sent each scheduled message: a load generator that cannot
    /// keep its schedule is the bottleneck, whatever the server does.
    send_lag: Histogram<u64>,
    /// Busy room: the timestamp of every publish sent, so one nobody received still counts.
    published: Vec<u64>,
    /// Busy room: subscribers the server closed (a slow-consumer close is a result, not a
    /// load generator error).
    subscribers_closed: u64,
}

impl Stats {
    fn new() -> Self {
        Stats {
            measuring: false,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            per_publish: HashMap::new(),
            ops: 0,
            sent: 0,
            errors: 0,
            http_latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            http_ok: 0,
            delivered_reported: 0,
            send_lag: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            published: Vec::new(),
            subscribers_closed: 0,
        }
    }

    fn reset(&mut self) {
        let measuring = self.measuring;
        *self = Stats::new();
        self.measuring = measuring;
    }

    fn record(&mut self, us: u64) {
        if self.measuring {
            self.ops += 1;
            let _ = self.latency.record(us.max(1));
        }
    }
}

type Shared = Rc<RefCell<Stats>>;
type Ws = WebSocketStream<TcpStream>;

async fn connect(args: &Args, id: usize, tok: &str) -> Result<Ws, String> {
    let path = args
        .path
        .replace("{id}", &format!("b{id}"))
        .replace("{token}", tok);
    let url = format!("ws://{}{}", args.addr, path);
    let stream = TcpStream::connect(&args.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// Opens `n` raw client sockets (see [`raw`]), `room_of(i)` naming each one's booking.
async fn open_all_raw(
    args: &Rc<Args>,
    n: usize,
    room_of: impl Fn(usize) -> usize,
) -> Vec<(Rc<raw::Conn>, Vec<u8>)> {
    let mut out = Vec::with_capacity(n);
    let open = |j: usize| {
        let path = args
            .path
            .replace("{id}", &format!("b{}", room_of(j)))
            .replace("{token}", &token(&args.secret, j));
        let addr = match j % (1 + args.spread_addr.len()) {
            0 => args.addr.clone(),
            k => args.spread_addr[k - 1].clone(),
        };
        async move {
            let t0 = Instant::now();
            let r = raw::connect(&addr, &path, (j as u32).wrapping_mul(2_654_435_761)).await;
            if r.is_ok() {
                let us = t0.elapsed().as_micros() as u64;
                HANDSHAKES.with(|h| h.borrow_mut().record(us.max(1)).ok());
                HANDSHAKE_LOG.with(|l| l.borrow_mut().push((j, us)));
            }
            r
        }
    };
    let mut results = Vec::with_capacity(n);
    if args.connect_rate > 0.0 {
        // Each connection starts on its own schedule: j / rate after the first.
        let start = tokio::time::Instant::now();
        let every = Duration::from_secs_f64(1.0 / args.connect_rate);
        let tasks: Vec<_> = (0..n)
            .map(|j| {
                let due = start + every * j as u32;
                let fut = open(j);
                async move {
                    tokio::time::sleep_until(due).await;
                    fut.await
                }
            })
            .collect();
        results = futures_util::future::join_all(tasks).await;
    } else {
        let mut i = 0;
        while i < n {
            let end = (i + args.connect_concurrency).min(n);
            results.extend(futures_util::future::join_all((i..end).map(open)).await);
            i = end;
        }
    }
    if let Ok(path) = std::env::var("BENCH_HANDSHAKE_LOG") {
        // Where a slow handshake sits in the ramp: clustered (a stall) or spread (a per-socket
        // cost).
        let lines: String = HANDSHAKE_LOG.with(|l| {
            l.borrow()
                .iter()
                .map(|(j, us)| format!("{j} {us}\n"))
                .collect()
        });
        let _ = std::fs::write(path, lines);
    }
    for r in results {
        match r {
            Ok(c) => out.push(c),
            Err(e) => eprintln!("connection failed: {e}"),
        }
    }
    out
}

/// Every echo ping, from one task: the k-th ping of the run is due at `k / rate` and goes to
/// connection `k mod n`, so each connection pings at its share of the rate. One timer for the
/// whole schedule instead of one per connection; the timestamp is the intended send time, so
/// a late send (or a stalled server) counts as latency.
async fn echo_schedule(
    conns: Vec<Rc<raw::Conn>>,
    rate: f64,
    epoch: Instant,
    stop: tokio::time::Instant,
    stats: Shared,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = tokio::time::Instant::now();
    let ep = tokio::time::Instant::from_std(epoch);
    let mut k: u32 = 0;
    let mut msg = Vec::with_capacity(64);
    while tokio::time::Instant::now() < stop {
        let due = start + interval * k;
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        while start + interval * k <= now {
            let sched = start + interval * k;
            let t = sched.duration_since(ep).as_micros();
            let lag = now.saturating_duration_since(sched).as_micros() as u64;
            msg.clear();
            use std::io::Write;
            let _ = write!(msg, "{{\"type\":\"ping\",\"t\":{t}}}");
            let ok = conns[k as usize % conns.len()].send(0x1, &msg);
            k += 1;
            let mut s = stats.borrow_mut();
            if !ok {
                s.errors += 1;
            } else if s.measuring {
                s.sent += 1;
                let _ = s.send_lag.record(lag.max(1));
            }
        }
    }
}

/// Reads one echo socket: every pong's round trip from the ping's timestamp.
async fn echo_reader(conn: Rc<raw::Conn>, rest: Vec<u8>, epoch: Instant, stats: Shared) {
    let r = conn
        .read_loop(rest, |text| {
            if let Some(t) = extract_ts(text, b"\"t\":") {
                stats.borrow_mut().record(micros(epoch).saturating_sub(t));
            }
        })
        .await;
    if r.is_err() {
        stats.borrow_mut().errors += 1;
    }
}

/// What a subscriber's socket closing means.
#[derive(Clone, Copy)]
enum OnClose {
    /// A load generator error (the broadcast scenarios expect every socket to stay open).
    Error,
    /// A server's answer to load (busy room: e.g. a slow-consumer close), counted apart.
    Counted,
}

/// One subscriber: records the latency of every location update it receives.
async fn subscriber(
    conn: Rc<raw::Conn>,
    rest: Vec<u8>,
    epoch: Instant,
    stats: Shared,
    on_close: OnClose,
) {
    let r = conn
        .read_loop(rest, |text| {
            if let Some(t) = extract_ts(text, b"\"timestamp\":") {
                let lat = micros(epoch).saturating_sub(t);
                let mut s = stats.borrow_mut();
                s.record(lat);
                // Kept outside the window too: a publish is judged by when it was sent (see
                // `run`), so one sent just before the window's end still counts whole.
                let e = s.per_publish.entry(t).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(lat);
            }
        })
        .await;
    if r.is_err() {
        let mut s = stats.borrow_mut();
        match on_close {
            OnClose::Error => s.errors += 1,
            OnClose::Counted => s.subscribers_closed += 1,
        }
    }
}

/// The busy room's location update, as a publisher sends it (over WebSocket or as the publish
/// API's `message`).
fn location_update(room: usize, t: u64) -> String {
    format!(
        "{{\"type\":\"location_update\",\"booking_id\":\"b{room}\",\"lat\":12.9716,\"lng\":77.5946,\"timestamp\":\"{t}\"}}"
    )
}

/// Every WebSocket publish of the busy room, from one task (as [`echo_schedule`]): the k-th
/// is due at `k / rate` and goes out on publisher `k mod n`, carrying its scheduled time.
async fn ws_publish_schedule(
    publishers: Vec<Rc<raw::Conn>>,
    rate: f64,
    epoch: Instant,
    stop: tokio::time::Instant,
    stats: Shared,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = tokio::time::Instant::now();
    let ep = tokio::time::Instant::from_std(epoch);
    let mut k: u32 = 0;
    while tokio::time::Instant::now() < stop {
        tokio::time::sleep_until(start + interval * k).await;
        let now = tokio::time::Instant::now();
        while start + interval * k <= now {
            let sched = start + interval * k;
            let t = sched.duration_since(ep).as_micros() as u64;
            let lag = now.saturating_duration_since(sched).as_micros() as u64;
            let ok = publishers[k as usize % publishers.len()]
                .send(0x1, location_update(0, t).as_bytes());
            k += 1;
            let mut s = stats.borrow_mut();
            if !ok {
                s.errors += 1;
            } else {
                s.published.push(t);
                if s.measuring {
                    s.sent += 1;
                    let _ = s.send_lag.record(lag.max(1));
                }
            }
        }
    }
}

/// One pipelined publish API connection of the busy room: requests go out at their scheduled
/// times whether or not earlier ones were answered (open loop); a reader matches answers to
/// requests in order for the API's own latency.
#[allow(clippy::too_many_arguments)]
async fn http_pipelined_publisher(
    args: Rc<Args>,
    period: Duration,
    phase: Duration,
    epoch: Instant,
    stats: Shared,
    stop: tokio::time::Instant,
) {
    let Some(stream) = connect_publisher(&args, &stats).await else {
        return;
    };
    let (mut rd, mut wr) = stream.into_split();
    let in_flight: Rc<RefCell<std::collections::VecDeque<u64>>> = Rc::default();
    let reader = {
        let in_flight = in_flight.clone();
        let stats = stats.clone();
        tokio::task::spawn_local(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                while let Some((status, body, used)) = parse_response(&buf) {
                    buf.drain(..used);
                    let t = in_flight.borrow_mut().pop_front().unwrap_or(0);
                    let mut s = stats.borrow_mut();
                    if status != 200 {
                        s.errors += 1;
                        if s.errors < 5 {
                            eprintln!(
                                "publish answered {status}: {}",
                                String::from_utf8_lossy(&body)
                            );
                        }
                    } else if s.measuring {
                        s.http_ok += 1;
                        s.delivered_reported += extract_ts(&body, b"\"delivered\":").unwrap_or(0);
                        let _ = s
                            .http_latency
                            .record(micros(epoch).saturating_sub(t).max(1));
                    }
                }
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
    };
    let ep = tokio::time::Instant::from_std(epoch);
    let mut next = tokio::time::Instant::now() + phase;
    while next < stop {
        tokio::time::sleep_until(next).await;
        let t = next.duration_since(ep).as_micros() as u64;
        let lag = tokio::time::Instant::now()
            .saturating_duration_since(next)
            .as_micros() as u64;
        next += period;
        let body = format!(
            "{{\"room\":\"booking:b0\",\"message\":{}}}",
            location_update(0, t)
        );
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            args.addr,
            args.api_key,
            body.len()
        );
        in_flight.borrow_mut().push_back(t);
        if let Err(e) = wr.write_all(req.as_bytes()).await {
            eprintln!("publish failed: {e}");
            stats.borrow_mut().errors += 1;
            break;
        }
        let mut s = stats.borrow_mut();
        s.published.push(t);
        if s.measuring {
            s.sent += 1;
            let _ = s.send_lag.record(lag.max(1));
        }
    }
    // The answers still on their way are the reader's; it ends when the process exits.
    drop(reader);
}

/// A minimal HTTP/1.1 keep-alive client for `POST /api/publish`, cheap enough to not matter.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn post(&mut self, host: &str, key: &str, body: &str) -> Result<(u16, Vec<u8>), String> {
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        loop {
            if let Some((status, body, used)) = parse_response(&self.buf) {
                self.buf.drain(..used);
                return Ok((status, body));
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("publish connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A complete response at the start of `buf`: (status, body, bytes used). Content-Length and
/// chunked bodies (Node and daphne answer chunked) are both understood.
fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut at = end + 4;
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_str = std::str::from_utf8(&buf[at..line_end]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
            if size == 0 {
                return Some((status, body, at));
            }
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if buf.len() < at + len {
        return None;
    }
    let body = buf[at..at + len].to_vec();
    at += len;
    Some((status, body, at))
}

/// A publisher's connection with Nagle off; a failure is counted as an error.
async fn connect_publisher(args: &Args, stats: &Shared) -> Option<TcpStream> {
    match TcpStream::connect(args.publish_addr.as_deref().unwrap_or(&args.addr)).await {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Some(s)
        }
        Err(e) => {
            eprintln!("publisher connect: {e}");
            stats.borrow_mut().errors += 1;
            None
        }
    }
}

/// One publishing connection: its share of the publish rate, rooms taken round robin.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    args: Rc<Args>,
    idx: usize,
    period: Duration,
    phase: Duration,
    epoch: Instant,
    stats: Shared,
    stop: tokio::time::Instant,
) {
    let Some(stream) = connect_publisher(&args, &stats).await else {
        return;
    };
    let mut http = Http {
        stream,
        buf: Vec::new(),
    };
    let ep = tokio::time::Instant::from_std(epoch);
    let mut next = tokio::time::Instant::now() + phase;
    let mut room = idx % args.rooms;
    while next < stop {
        tokio::time::sleep_until(next).await;
        let t = next.duration_since(ep).as_micros() as u64;
        let lag = tokio::time::Instant::now()
            .saturating_duration_since(next)
            .as_micros() as u64;
        next += period;
        let body = format!(
            "{{\"room\":\"booking:b{room}\",\"message\":{{\"type\":\"location_update\",\"booking_id\":\"b{room}\",\"lat\":12.9716,\"lng\":77.5946,\"timestamp\":\"{t}\"}}}}"
        );
        room = (room + args.publishers) % args.rooms;
        match http.post(&args.addr, &args.api_key, &body).await {
            Ok((200, body)) => {
                let lat = micros(epoch).saturating_sub(t);
                let n = extract_ts(&body, b"\"delivered\":").unwrap_or(0);
                let mut s = stats.borrow_mut();
                if s.measuring {
                    s.sent += 1;
                    s.http_ok += 1;
                    let _ = s.send_lag.record(lag.max(1));
                    s.delivered_reported += n;
                    let _ = s.http_latency.record(lat.max(1));
                }
            }
            Ok((status, body)) => {
                eprintln!(
                    "publish answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                stats.borrow_mut().errors += 1;
                return;
            }
            Err(e) => {
                eprintln!("publish failed: {e}");
                stats.borrow_mut().errors += 1;
                return;
            }
        }
    }
}

/// One storm worker: connect, upgrade (the server verifies the token), wait for the first
/// message, close; again until `stop`.
async fn storm_worker(args: Rc<Args>, idx: usize, epoch: Instant, stats: Shared, stop: Instant) {
    let mut n = 0usize;
    while Instant::now() < stop {
        let tok = token(&args.secret, idx * 1_000_000 + n);
        n += 1;
        let t0 = micros(epoch);
        match connect(&args, idx * 1_000_000 + n, &tok).await {
            Ok(mut ws) => {
                let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                if !matches!(first, Ok(Some(Ok(_)))) {
                    stats.borrow_mut().errors += 1;
                    continue;
                }
                stats.borrow_mut().record(micros(epoch).saturating_sub(t0));
                // RST instead of FIN: thousands of TIME_WAIT sockets would exhaust the
                // loopback's ephemeral ports long before the server's limits.
                #[allow(deprecated)]
                let _ = ws.get_ref().set_linger(Some(Duration::ZERO));
                drop(ws);
            }
            Err(e) => {
                let mut s = stats.borrow_mut();
                s.errors += 1;
                if s.errors < 5 {
                    eprintln!("storm: {e}");
                }
            }
        }
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    let args = Rc::new(Args::parse());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = LocalSet::new();
    local.block_on(&rt, run(args));
}

async fn run(args: Rc<Args>) {
    let epoch = Instant::now();
    let stats: Shared = Rc::new(RefCell::new(Stats::new()));
    let pids = args.server_pid.clone();
    let rss_before = proc_stat::rss_kib(&pids);

    let conns = match args.scenario {
        Scenario::Storm => Vec::new(),
        Scenario::Echo => open_all_raw(&args, args.conns, |i| i).await,
        Scenario::Broadcast | Scenario::Idle => {
            let rooms = args.rooms.max(1);
            open_all_raw(&args, args.conns, move |i| i % rooms).await
        }
        Scenario::BusyRoom => open_all_raw(&args, args.conns, |_| 0).await,
    };
    let opened = conns.len();
    if args.scenario != Scenario::Storm && opened < args.conns {
        eprintln!("only {opened} of {} connections opened", args.conns);
    }
    let warm = Duration::from_secs_f64(args.warmup);
    let window = Duration::from_secs_f64(args.duration);
    // What arrives after the window still counts for the busy room's completeness, and the
    // publishers keep going meanwhile, so the window's last publishes drain under load.
    let drain = match args.scenario {
        Scenario::BusyRoom => Duration::from_secs_f64(args.drain.max(0.3)),
        _ => Duration::from_millis(300),
    };

    let end_all = match args.scenario {
        Scenario::BusyRoom => tokio::time::Instant::now() + warm + window + drain,
        _ => tokio::time::Instant::now() + warm + window + Duration::from_millis(200),
    };
    match args.scenario {
        Scenario::Echo => {
            let mut senders = Vec::with_capacity(conns.len());
            for (conn, rest) in conns {
                senders.push(conn.clone());
                tokio::task::spawn_local(echo_reader(conn, rest, epoch, stats.clone()));
            }
            if !senders.is_empty() {
                tokio::task::spawn_local(echo_schedule(
                    senders,
                    args.rate,
                    epoch,
                    end_all,
                    stats.clone(),
                ));
            }
        }
        Scenario::Broadcast => {
            for (conn, rest) in conns {
                tokio::task::spawn_local(subscriber(
                    conn,
                    rest,
                    epoch,
                    stats.clone(),
                    OnClose::Error,
                ));
            }
            let p = args.publishers.max(1);
            let period = Duration::from_secs_f64(p as f64 / args.rate.max(0.001));
            for i in 0..p {
                let phase = period.mul_f64(i as f64 / p as f64);
                tokio::task::spawn_local(publisher(
                    args.clone(),
                    i,
                    period,
                    phase,
                    epoch,
                    stats.clone(),
                    end_all,
                ));
            }
        }
        Scenario::BusyRoom => {
            for (conn, rest) in conns {
                tokio::task::spawn_local(subscriber(
                    conn,
                    rest,
                    epoch,
                    stats.clone(),
                    OnClose::Counted,
                ));
            }
            let p = args.publishers.max(1);
            match args.publish_via {
                PublishVia::Ws => {
                    // Members of the room too (so the server can broadcast from them); the
                    // server skips the sender, so they receive no location updates.
                    let pubs = open_all_raw(&args, p, |_| 0).await;
                    if pubs.len() < p {
                        stats.borrow_mut().errors += (p - pubs.len()) as u64;
                    }
                    let mut senders = Vec::with_capacity(pubs.len());
                    for (conn, rest) in pubs {
                        senders.push(conn.clone());
                        let stats = stats.clone();
                        tokio::task::spawn_local(async move {
                            if conn.read_loop(rest, |_| {}).await.is_err() {
                                stats.borrow_mut().errors += 1;
                            }
                        });
                    }
                    if !senders.is_empty() {
                        tokio::task::spawn_local(ws_publish_schedule(
                            senders,
                            args.rate,
                            epoch,
                            end_all,
                            stats.clone(),
                        ));
                    }
                }
                PublishVia::Http => {
                    let period = Duration::from_secs_f64(p as f64 / args.rate.max(0.001));
                    for i in 0..p {
                        let phase = period.mul_f64(i as f64 / p as f64);
                        tokio::task::spawn_local(http_pipelined_publisher(
                            args.clone(),
                            period,
                            phase,
                            epoch,
                            stats.clone(),
                            end_all,
                        ));
                    }
                }
            }
        }
        Scenario::Idle => {
            // Hold every socket, reading (and so answering pings) like a real idle client.
            for (conn, rest) in conns {
                tokio::task::spawn_local(async move {
                    let _ = conn.read_loop(rest, |_| {}).await;
                });
            }
        }
        Scenario::Storm => {
            let stop = Instant::now() + warm + window;
            for i in 0..args.conns {
                tokio::task::spawn_local(storm_worker(args.clone(), i, epoch, stats.clone(), stop));
            }
        }
    }

    tokio::time::sleep(warm).await;
    stats.borrow_mut().reset();
    stats.borrow_mut().measuring = true;
    let window_start_us = micros(epoch);
    let cpu0 = proc_stat::cpu_seconds(&pids);
    let threads0 = proc_stat::thread_cpu_seconds(&pids);
    let self0 = proc_stat::self_cpu_seconds();
    let wait0 = proc_stat::self_runqueue_wait_seconds();
    let server_wait0 = proc_stat::runqueue_wait_seconds(&pids);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = proc_stat::cpu_seconds(&pids) - cpu0;
    // Per thread (shard), the busy ones only: did a room's fan-out run on every core?
    let threads: serde_json::Map<String, serde_json::Value> = proc_stat::thread_cpu_seconds(&pids)
        .into_iter()
        .map(|(name, s)| (s - threads0.get(&name).copied().unwrap_or(0.0), name))
        .filter(|(s, _)| *s >= 0.01)
        .map(|(s, name)| (name, serde_json::json!((s * 100.0).round() / 100.0)))
        .collect();
    let self_cpu = proc_stat::self_cpu_seconds() - self0;
    let runq_wait = proc_stat::self_runqueue_wait_seconds() - wait0;
    let server_wait = proc_stat::runqueue_wait_seconds(&pids) - server_wait0;
    stats.borrow_mut().measuring = false;
    let window_end_us = micros(epoch);
    let rss = proc_stat::rss_kib(&pids);
    // Let in-flight broadcasts land before judging completeness.
    tokio::time::sleep(drain).await;

    let mut s = stats.borrow_mut();
    // Only publishes sent inside the window: one sent before it was partly delivered before
    // the counters were reset.
    s.per_publish
        .retain(|t, _| (window_start_us..window_end_us).contains(t));
    let ops = s.ops as f64;
    let mut last = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for (_, max) in s.per_publish.values() {
        let _ = last.record((*max).max(1));
    }
    let fans_out = matches!(args.scenario, Scenario::Broadcast | Scenario::BusyRoom);
    let expected_per_publish = if fans_out {
        (opened / args.rooms.max(1)) as f64
    } else {
        0.0
    };
    let complete = if fans_out && !s.per_publish.is_empty() {
        s.per_publish
            .values()
            .filter(|(c, _)| *c as f64 >= expected_per_publish)
            .count() as f64
            / s.per_publish.len() as f64
    } else {
        1.0
    };
    // Busy room: every delivery owed for the publishes sent inside the window, against what
    // arrived by the end of the drain.
    let in_window = |t: &u64| (window_start_us..window_end_us).contains(t);
    let published_in_window = s.published.iter().filter(|t| in_window(t)).count() as u64;
    let expected_deliveries = published_in_window * opened as u64;
    let delivered_by_drain: u64 = s.per_publish.values().map(|(c, _)| *c as u64).sum();
    let undelivered = expected_deliveries.saturating_sub(delivered_by_drain);
    let offered = match args.scenario {
        Scenario::Echo | Scenario::Broadcast | Scenario::BusyRoom => args.rate * elapsed,
        _ => 0.0,
    };
    let loadgen_util = self_cpu / elapsed;
    // The load generator is the bottleneck if its own core is near full, or if it could not
    // even send what was offered.
    let sent_short = offered > 0.0 && (s.sent as f64) < 0.95 * offered;
    // Or if it kept missing its schedule (p99 send lag over 5 ms): on a shared host its core
    // may be busy with something else even when its own CPU use looks low.
    let lag_p99 = pct(&s.send_lag, 0.99);
    let saturated = loadgen_util > 0.90 || sent_short || lag_p99 > 5.0;
    let per_conn_kib = if opened > 0 {
        (rss.saturating_sub(rss_before)) as f64 / opened as f64
    } else {
        0.0
    };
    let mut result = serde_json::json!({
        "threads_cpu_s": threads,
        "label": args.label,
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "conns": opened,
        "rooms": args.rooms,
        "rate_offered": args.rate,
        "seconds": elapsed,
        "ops": s.ops,
        "ops_per_s": ops / elapsed,
        "sent": s.sent,
        "errors": s.errors,
        "p50_ms": pct(&s.latency, 0.50),
        "p99_ms": pct(&s.latency, 0.99),
        "handshake_p50_ms": HANDSHAKES.with(|h| pct(&h.borrow(), 0.50)),
        "handshake_p99_ms": HANDSHAKES.with(|h| pct(&h.borrow(), 0.99)),
        "handshake_max_ms": HANDSHAKES.with(|h| pct(&h.borrow(), 1.0)),
        "p999_ms": pct(&s.latency, 0.999),
        "max_ms": pct(&s.latency, 1.0),
        "last_p99_ms": pct(&last, 0.99),
        "complete_publishes": complete,
        "http_ok": s.http_ok,
        "http_p99_ms": pct(&s.http_latency, 0.99),
        "delivered_reported": s.delivered_reported,
        "server_cpu_s": cpu,
        "server_cpu_s_per_mop": if ops > 0.0 { cpu / (ops / 1e6) } else { 0.0 },
        "ops_per_server_cpu_s": if cpu > 0.0 { ops / cpu } else { 0.0 },
        "server_rss_kib": rss,
        "server_runqueue_wait": server_wait / elapsed,
        "server_rss_before_kib": rss_before,
        "server_kib_per_conn": per_conn_kib,
        "loadgen_cpu_util": loadgen_util,
        "loadgen_runqueue_wait": runq_wait / elapsed,
        "loadgen_send_lag_p99_ms": lag_p99,
        "loadgen_saturated": saturated,
    });
    if args.scenario == Scenario::BusyRoom {
        let extra = serde_json::json!({
            "publish_via": format!("{:?}", args.publish_via).to_lowercase(),
            "publishers": args.publishers,
            "subscribers": opened,
            "offered_deliveries_per_s": args.rate * opened as f64,
            "deliveries_per_s": ops / elapsed,
            "server_cpu_us_per_delivery": if ops > 0.0 { cpu * 1e6 / ops } else { 0.0 },
            "published_in_window": published_in_window,
            "expected_deliveries": expected_deliveries,
            "delivered_by_drain": delivered_by_drain,
            "undelivered": undelivered,
            "undelivered_frac": if expected_deliveries > 0 {
                undelivered as f64 / expected_deliveries as f64
            } else {
                0.0
            },
            "drain_s": drain.as_secs_f64(),
            "subscribers_closed": s.subscribers_closed,
        });
        if let (Some(r), Some(e)) = (result.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
    }
    println!("{result}");
    eprintln!(
        "{} {}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, server {:.2} CPU-s/Mop, rss {} KiB, loadgen {:.0}% (send lag p99 {:.2} ms, run-queue wait {:.0}%){}",
        args.label,
        result["scenario"].as_str().unwrap_or(""),
        ops / elapsed,
        pct(&s.latency, 0.5),
        pct(&s.latency, 0.99),
        pct(&s.latency, 0.999),
        result["server_cpu_s_per_mop"].as_f64().unwrap_or(0.0),
        rss,
        loadgen_util * 100.0,
        lag_p99,
        runq_wait / elapsed * 100.0,
        if saturated { " (LOAD GENERATOR SATURATED)" } else { "" }
    );
    // Exiting drops every socket at once; the server sees resets, which is fine for a bench.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::{extract_ts, parse_response};

    #[test]
    fn timestamps_are_found_quoted_or_not() {
        assert_eq!(
            extract_ts(br#"{"type":"pong","t":1234}"#, b"\"t\":"),
            Some(1234)
        );
        assert_eq!(
            extract_ts(br#"{"a":1,"timestamp":"987","b":2}"#, b"\"timestamp\":"),
            Some(987)
        );
        assert_eq!(extract_ts(br#"{"type":"pong"}"#, b"\"t\":"), None);
        assert_eq!(
            extract_ts(br#"{"type": "pong", "t": 42}"#, b"\"t\":"),
            Some(42)
        );
    }

    #[test]
    fn responses_parse_with_length_or_chunked() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}rest";
        assert_eq!(parse_response(r), Some((200, b"{}".to_vec(), r.len() - 4)));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(parse_response(c), Some((200, b"abc".to_vec(), c.len())));
        assert_eq!(parse_response(&c[..c.len() - 3]), None);
    }
}
