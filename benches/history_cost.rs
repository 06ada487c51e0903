//! What history costs on the real binary (issue 16), two numbers:
//!
//! - **memory per room with history**: Beacon's `VmRSS` as `ROOMS` rooms fill with `PER_ROOM`
//!   messages of about 200 bytes each (`POST /api/publish`, 1000 items per request), the first
//!   half of the rooms and then the second: the growth over the second half, divided by its
//!   rooms (the first half also pays the process's high-water mark for handling publishes);
//! - **resume time for a client `BEHIND` messages behind**: from the TCP connect to the
//!   declared `resumed` answer, for a client that comes back with a position `BEHIND` messages
//!   old, beside the same reconnect with nothing missed (its position at the top), so the
//!   difference is the catch-up itself. Medians of `RESUMES` of each, alternated.
//!
//! ```sh
//! cargo build --release -p beacon
//! cargo bench --bench history_cost                  # 10k rooms x 100 messages, 100 behind
//! ROOMS=1000 PER_ROOM=100 BEHIND=100 RESUMES=50 cargo bench --bench history_cost
//! ```
//!
//! Beacon runs from `target/release/beacon` (or `BEACON_BIN`) on
//! `benches/protocol-history.toml` (history on `booking:*`, 100 messages per room) with one
//! shard, so every room lives on the shard the numbers describe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tungstenite::Message;

const SECRET: &str = "bench-secret-that-is-at-least-32-bytes-long";
const API_KEY: &str = "bench-api-key";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Beacon {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Beacon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn start() -> Beacon {
    let bin = std::env::var("BEACON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root().join("target"));
            target.join("release/beacon")
        });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(&bin)
        .args(["serve", "--protocol"])
        .arg(root().join("benches/protocol-history.toml"))
        .args(["--listen", &addr.to_string(), "--shards", "1"])
        .args(["--log-level", "warn"])
        .env("BEACON_JWT_SECRET", SECRET)
        .env("BEACON_API_KEY", API_KEY)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release -p beacon)", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(addr, "GET", "/readyz", "").0 != 200 {
        assert!(Instant::now() < deadline, "beacon did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Beacon { child, addr }
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A location update of about 200 bytes on the wire, position included.
fn location(room: usize, n: usize) -> Value {
    json!({"room": format!("booking:b{room}"), "message": {
        "type": "location_update", "booking_id": format!("b{room}"),
        "lat": 12.9716 + n as f64 * 1e-5, "lng": 77.5946,
        "timestamp": "2026-12-04T18:00:00.000Z", "actor": "Ravi Kumar (plumber)",
        "eta_minutes": 7}})
}

fn publish(addr: SocketAddr, items: &[Value]) {
    let (status, body) = http(
        addr,
        "POST",
        "/api/publish",
        &Value::from(items).to_string(),
    );
    assert_eq!(status, 200, "{body}");
}

fn token() -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"user_id": 1, "token_type": "access", "exp": exp, "role": "admin"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Connects to booking `room` from `since` (`None`: where is the room?) and reads up to the
/// resume answer: (time from connect to the answer, messages caught up, the position told).
fn resume(
    addr: SocketAddr,
    room: &str,
    since: Option<(u64, &str)>,
) -> (Duration, usize, (u64, String)) {
    let query = match since {
        Some((o, e)) => format!("offset={o}&epoch={e}"),
        None => "offset=".to_owned(),
    };
    let url = format!("ws://{addr}/ws/bookings/{room}/?token={}&{query}", token());
    let t = Instant::now();
    let (mut ws, _) = tungstenite::connect(url).expect("upgrade");
    let mut caught = 0;
    loop {
        let Message::Text(text) = ws.read().expect("message") else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["type"].as_str() {
            Some("location_update") => caught += 1,
            Some("resumed") => {
                let took = t.elapsed();
                let at = (
                    v["offset"].as_u64().unwrap(),
                    v["epoch"].as_str().unwrap().to_owned(),
                );
                let _ = ws.close(None);
                return (took, caught, at);
            }
            Some("reload") => panic!("not recovered: {v}"),
            _ => {}
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let rooms = env_or("ROOMS", 10_000);
    let per_room = env_or("PER_ROOM", 100);
    let behind = env_or("BEHIND", 100);
    let resumes = env_or("RESUMES", 50);

    let b = start();
    let pid = b.child.id();
    // Two halves of the rooms, filled one after the other: the first half also brings the
    // process to its high-water mark for handling publishes (request buffers, parsed bodies),
    // so the growth over the second half is what the histories themselves hold.
    let fill = |from: usize, to: usize| {
        let mut batch = Vec::with_capacity(1000);
        for r in from..to {
            for n in 0..per_room {
                batch.push(location(r, n));
                if batch.len() == 1000 {
                    publish(b.addr, &batch);
                    batch.clear();
                }
            }
        }
        if !batch.is_empty() {
            publish(b.addr, &batch);
        }
        std::thread::sleep(Duration::from_millis(500));
        rss_kib(pid)
    };
    let before = rss_kib(pid);
    let t = Instant::now();
    let half = fill(0, rooms / 2);
    let after = fill(rooms / 2, rooms);
    let filled = t.elapsed();
    let metrics = http(b.addr, "GET", "/metrics", "").1;
    let held: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("beacon_history_messages{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let second = (rooms - rooms / 2) as f64;
    let grown = after.saturating_sub(half) as f64 * 1024.0;
    println!(
        "memory: {rooms} rooms x {per_room} messages (~200 B): VmRSS {before} -> {half} (half \
         the rooms) -> {after} KiB; the second half: {:.1} KiB per room, {:.0} B per message \
         ({held} held in all; filled in {:.1} s)",
        grown / second / 1024.0,
        grown / (second * per_room as f64),
        filled.as_secs_f64()
    );

    // Resume: the same room each time, alternating a reconnect with nothing missed and one
    // `behind` messages behind.
    let room = "resume";
    let (_, _, mut at) = resume(b.addr, room, None);
    let (mut caught_up, mut at_top) = (Vec::new(), Vec::new());
    for _ in 0..resumes {
        let (took, n, now) = resume(b.addr, room, Some((at.0, &at.1)));
        assert_eq!(n, 0);
        at_top.push(took);
        at = now;
        let items: Vec<Value> = (0..behind)
            .map(|n| {
                let mut v = location(0, n);
                v["room"] = json!(format!("booking:{room}"));
                v
            })
            .collect();
        publish(b.addr, &items);
        let (took, n, now) = resume(b.addr, room, Some((at.0, &at.1)));
        assert_eq!(n, behind, "every missed message, then resumed");
        caught_up.push(took);
        at = now;
    }
    let (m_top, m_behind) = (median(at_top), median(caught_up));
    println!(
        "resume: connect to `resumed`, median of {resumes}: nothing missed {:.0} us, \
         {behind} behind {:.0} us (catch-up {:.0} us)",
        m_top.as_secs_f64() * 1e6,
        m_behind.as_secs_f64() * 1e6,
        m_behind.saturating_sub(m_top).as_secs_f64() * 1e6
    );
}
