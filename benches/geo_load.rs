//! Socket load scenario for the VISIBLE protocol: 10k providers and 2k seekers over real
//! WebSockets against the release `beacon` binary (a separate process: each side then stays
//! under this box's 20k open files per process).
//!
//! Providers (10 categories, 3 subcategories) go active at random spots in a 50 km city, then
//! move on a fixed schedule totalling `--rate` updates/s; seekers hold 3 km standing searches.
//! The protocol is visible.toml with `moved_min_interval_ms = 0`, so every move of a provider in
//! range reaches the seeker and every update can be timed. Latency is from a provider's send to
//! the seeker's receipt of the `provider_location_update` / `new_provider_available` it caused
//! (matched by provider id and exact latitude), on one client thread.
//!
//! `cargo build --release -p beacon && cargo bench --bench geo_load -- [--rate N] [--secs S]`

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const PROVIDERS: u32 = 10_000;
const SEEKERS: u32 = 2_000;
const CATEGORIES: u32 = 10;
const SUBS: u32 = 3;
const SEARCH_KM: f64 = 3.0;
const CENTRE: (f64, f64) = (11.2588, 75.7804);
const HALF_SIDE_DEG: f64 = 25.0 / 111.195;
const STEP_DEG: f64 = 0.00027;
const SECRET: &str = "geo-load-bench-secret-at-least-32-bytes!!";
const API_KEY: &str = "geo-load-bench-key";
/// Sockets opening at once; the listen backlog is finite.
const CONNECT_WAVE: usize = 256;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

fn spot(rng: &mut Rng) -> (f64, f64) {
    let dlon = HALF_SIDE_DEG / CENTRE.0.to_radians().cos();
    (
        CENTRE.0 + rng.between(-HALF_SIDE_DEG, HALF_SIDE_DEG),
        CENTRE.1 + rng.between(-dlon, dlon),
    )
}

fn token(user: u32) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"token_type": "access", "exp": exp, "user_id": user}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A client text frame (masked with a zero key, which RFC 6455 allows).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81];
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else {
        out.push(0x80 | 126);
        out.extend((n as u16).to_be_bytes());
    }
    out.extend([0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Server frames are unmasked: returns (opcode, payload range, frame length) when complete.
fn parse(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0f;
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= head + len).then_some((op, head..head + len, head + len))
}

async fn open(addr: SocketAddr, path: &str, user: u32) -> Option<(TcpStream, Vec<u8>)> {
    for attempt in 0..20 {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Authorization: Bearer {}\r\n\r\n",
                token(user)
            );
            if s.write_all(req.as_bytes()).await.is_err() {
                continue;
            }
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !buf.starts_with(b"HTTP/1.1 101") {
                        return None;
                    }
                    buf.drain(..end + 4);
                    return Some((s, buf));
                }
            }
        }
        glommio::timer::sleep(Duration::from_millis(10 * (attempt + 1))).await;
    }
    None
}

/// Shared by every client task on the one client thread.
struct Shared {
    sent_at: RefCell<HashMap<(u32, u64), Instant>>,
    latency: RefCell<Histogram<u64>>,
    measuring: Cell<bool>,
    stop: Cell<bool>,
    sent: Cell<u64>,
    received: Cell<u64>,
    unmatched: Cell<u64>,
    ready: Cell<u32>,
}

async fn provider(
    addr: SocketAddr,
    id: u32,
    sh: Rc<Shared>,
    start: Rc<Cell<Option<Instant>>>,
    period: Duration,
) {
    let user = 100_000 + id;
    let Some((mut s, _)) = open(addr, "/ws/location/provider/", user).await else {
        eprintln!("provider {user} could not connect");
        return;
    };
    let mut rng = Rng(user as u64);
    let mut at = spot(&mut rng);
    let status = json!({"type": "provider_status_update", "active": true,
        "category_code": format!("MS000{}", id % CATEGORIES),
        "subcategory_code": format!("SS000{}", id / CATEGORIES % SUBS),
        "latitude": at.0, "longitude": at.1});
    let _ = s.write_all(&frame(status.to_string().as_bytes())).await;
    sh.ready.set(sh.ready.get() + 1);
    let start = loop {
        match start.get() {
            Some(t) if Instant::now() >= t => break t,
            _ => glommio::timer::sleep(Duration::from_millis(20)).await,
        }
    };
    // Spread the providers' phases over one period.
    let mut due = start + period.mul_f64((id as f64) / PROVIDERS as f64);
    while !sh.stop.get() {
        let now = Instant::now();
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        due += period;
        at.0 += rng.between(-STEP_DEG, STEP_DEG);
        at.1 += rng.between(-STEP_DEG, STEP_DEG);
        let msg = json!({"type": "location_update", "latitude": at.0, "longitude": at.1});
        if sh.measuring.get() {
            sh.sent_at
                .borrow_mut()
                .insert((user, at.0.to_bits()), Instant::now());
            sh.sent.set(sh.sent.get() + 1);
        }
        if s.write_all(&frame(msg.to_string().as_bytes()))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn seeker(addr: SocketAddr, id: u32, sh: Rc<Shared>) {
    let user = 500_000 + id;
    let Some((mut s, mut buf)) = open(addr, "/ws/location/seeker/", user).await else {
        eprintln!("seeker {user} could not connect");
        return;
    };
    let mut rng = Rng(user as u64 ^ 0xabcdef);
    let at = spot(&mut rng);
    let search = json!({"type": "seeker_search_update", "searching": true,
        "latitude": at.0, "longitude": at.1, "category_code": format!("MS000{}", id % CATEGORIES),
        "distance_radius": SEARCH_KM});
    let _ = s.write_all(&frame(search.to_string().as_bytes())).await;
    sh.ready.set(sh.ready.get() + 1);
    let mut chunk = vec![0u8; 16 * 1024];
    while !sh.stop.get() {
        while let Some((op, range, len)) = parse(&buf) {
            if op == 1 && sh.measuring.get() {
                let v: Value = serde_json::from_slice(&buf[range]).unwrap_or(Value::Null);
                let ty = v["type"].as_str().unwrap_or("");
                if ty == "provider_location_update" || ty == "new_provider_available" {
                    let key = (
                        v["provider_id"].as_u64().unwrap_or(0) as u32,
                        v["latitude"].as_f64().unwrap_or(0.0).to_bits(),
                    );
                    let sent = sh.sent_at.borrow().get(&key).copied();
                    match sent {
                        Some(t) => {
                            let ns = t.elapsed().as_nanos() as u64;
                            let _ = sh.latency.borrow_mut().record(ns.max(1000));
                            sh.received.set(sh.received.get() + 1);
                        }
                        None => sh.unmatched.set(sh.unmatched.get() + 1),
                    }
                }
            }
            buf.drain(..len);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0.0;
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str, d: f64| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(d)
    };
    let rate = arg("--rate", 10_000.0);
    let secs = arg("--secs", 10.0);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = std::fs::read_to_string(root.join("config/protocols/visible.toml"))
        .unwrap()
        .replace("moved_min_interval_ms = 1000", "moved_min_interval_ms = 0")
        .replace("per_second = 20.0", "per_second = 1000.0");
    let proto_path = root.join("target/geo_load_visible.toml");
    std::fs::write(&proto_path, proto).unwrap();
    let bin = root.join("target/release/beacon");
    assert!(
        bin.exists(),
        "build it first: cargo build --release -p beacon"
    );
    let mut child = std::process::Command::new(&bin)
        .current_dir(root)
        .args(["serve", "--protocol"])
        .arg(&proto_path)
        .args(["--config", "config/beacon.toml", "--listen", "127.0.0.1:0"])
        .env("BEACON_JWT_SECRET", SECRET)
        .env("BEACON_API_KEY", API_KEY)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    eprintln!("beacon at {addr}; opening {PROVIDERS} provider and {SEEKERS} seeker sockets");

    let report = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .ring_depth(1024)
        .spawn(move || async move {
            let sh = Rc::new(Shared {
                sent_at: RefCell::new(HashMap::new()),
                latency: RefCell::new(Histogram::new_with_bounds(1000, 60_000_000_000, 3).unwrap()),
                measuring: Cell::new(false),
                stop: Cell::new(false),
                sent: Cell::new(0),
                received: Cell::new(0),
                unmatched: Cell::new(0),
                ready: Cell::new(0),
            });
            let period = Duration::from_secs_f64(PROVIDERS as f64 / rate);
            let start: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
            let opened = Instant::now();
            for id in 0..SEEKERS + PROVIDERS {
                while sh.ready.get() + (CONNECT_WAVE as u32) < id {
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
                if id < SEEKERS {
                    glommio::spawn_local(seeker(addr, id, sh.clone())).detach();
                } else {
                    let p = provider(addr, id - SEEKERS, sh.clone(), start.clone(), period);
                    glommio::spawn_local(p).detach();
                }
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while sh.ready.get() < SEEKERS + PROVIDERS && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            let ready = sh.ready.get();
            let open_s = opened.elapsed().as_secs_f64();
            // Let the last status updates and searches land, then move for a warm-up second.
            glommio::timer::sleep(Duration::from_secs(1)).await;
            start.set(Some(Instant::now()));
            glommio::timer::sleep(Duration::from_secs(2)).await;
            let m0 = metric(addr, "beacon_messages_received_total");
            let o0 = metric(addr, "beacon_messages_sent_total");
            let t0 = Instant::now();
            sh.measuring.set(true);
            glommio::timer::sleep(Duration::from_secs_f64(secs)).await;
            sh.measuring.set(false);
            let wall = t0.elapsed().as_secs_f64();
            let m1 = metric(addr, "beacon_messages_received_total");
            let o1 = metric(addr, "beacon_messages_sent_total");
            // Stragglers still in flight are not counted; stop everyone.
            sh.stop.set(true);
            let h = sh.latency.borrow();
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            format!(
                "{ready} sockets ({PROVIDERS} providers, {SEEKERS} seekers) open in {open_s:.1} s; \
                 target {rate:.0} updates/s for {secs} s\n\
                 updates sent/s {:.0}; server messages received/s {:.0}, frames sent/s {:.0}; \
                 timed notifications received/s {:.0} (unmatched {})\n\
                 update-to-notification latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                sh.sent.get() as f64 / wall,
                (m1 - m0) / wall,
                (o1 - o0) / wall,
                sh.received.get() as f64 / wall,
                sh.unmatched.get(),
                us(0.5) / 1000.0,
                us(0.99) / 1000.0,
                us(0.999) / 1000.0,
                h.max() as f64 / 1e6,
            )
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    println!("{report}");
}
