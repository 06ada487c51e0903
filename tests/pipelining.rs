//! Bytes that change hands: messages a client sends right behind its authentication (or
//! behind the upgrade request itself) must all be processed, in order, whichever shard
//! accepted the socket and whichever owns its room. Runs against
//! config/protocols/visible.toml on two shards, many sockets at once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

fn protocol() -> String {
    std::fs::read_to_string(root().join("config/protocols/visible.toml")).unwrap()
}

/// A masked client text frame (RFC 6455 5.2), so several can go out in one write.
fn text_frame(payload: &str) -> Vec<u8> {
    let p = payload.as_bytes();
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81];
    match p.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn upgrade_request(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Reads the `101` head; whatever came after it is handed to the WebSocket.
fn read_101(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(
                buf.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&buf)
            );
            return buf.split_off(end + 4);
        }
        let n = stream.read(&mut chunk).expect("101 arrives");
        assert!(n > 0, "closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn next_json(ws: &mut WebSocket<TcpStream>) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// How a socket authenticates and when its messages leave.
#[derive(Clone, Copy)]
enum Auth {
    /// `{"type": "authenticate"}` first, then the messages in the same write, after the 101.
    FirstMessage,
    /// The token in a header, and the messages written with the upgrade request itself,
    /// before the 101 (a client should wait, but the bytes must not be lost if it does not).
    HeaderEarly,
}

/// Opens `batch` sockets at once, each sending a search and an unknown message type right
/// behind its authentication, then reads both answers from each. Returns how many sockets got
/// both.
fn round(addr: SocketAddr, auth: Auth, users: std::ops::Range<u64>) -> usize {
    let search = json!({"type": "seeker_search_update", "searching": true,
        "latitude": 11.2588, "longitude": 75.8577, "category_code": "none-here",
        "distance_radius": 5.0})
    .to_string();
    let unknown = json!({"type": "no_such_message"}).to_string();
    let mut socks = Vec::new();
    for uid in users {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tok = token(json!(uid), json!({}));
        let mut pipelined = Vec::new();
        let early = match auth {
            Auth::FirstMessage => {
                s.write_all(&upgrade_request(addr, "/ws/location/seeker/", &[]))
                    .unwrap();
                let early = read_101(&mut s);
                pipelined.extend(text_frame(
                    &json!({"type": "authenticate", "token": tok}).to_string(),
                ));
                early
            }
            Auth::HeaderEarly => {
                pipelined.extend(upgrade_request(
                    addr,
                    "/ws/location/seeker/",
                    &[("Authorization", format!("Bearer {tok}"))],
                ));
                Vec::new()
            }
        };
        pipelined.extend(text_frame(&search));
        pipelined.extend(text_frame(&unknown));
        s.write_all(&pipelined).unwrap();
        socks.push((s, early));
    }
    let mut answered = 0;
    // One deadline for the whole batch: a lost answer costs the batch a wait, not each socket.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (mut s, mut early) in socks {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        if matches!(auth, Auth::HeaderEarly) {
            early = read_101(&mut s);
        }
        let mut ws = WebSocket::from_partially_read(s, early, Role::Client, None);
        // The search's answer comes from the shard that owns the pool instance, so it may
        // follow the error, which the connection's own shard answers at once.
        let mut got: Vec<String> = (0..2)
            .filter_map(|_| next_json(&mut ws))
            .map(|v| format!("{}/{}", v["type"], v["code"]))
            .collect();
        got.sort();
        let ok = got == ["\"error\"/\"unknown_type\"", "\"providers_nearby\"/null"];
        if !ok && std::env::var("PIPE_DEBUG").is_ok() {
            eprintln!("{got:?}");
        }
        answered += ok as usize;
        let _ = ws.close(None);
    }
    answered
}

/// Runs `total` sockets, `threads` clients at a time each opening `batch` sockets at once.
fn run(e: &Engine, auth: Auth, total: u64, threads: u64, batch: u64) -> usize {
    let answered = Arc::new(AtomicUsize::new(0));
    let per_thread = total / threads;
    std::thread::scope(|s| {
        for t in 0..threads {
            let answered = answered.clone();
            let addr = e.addr;
            s.spawn(move || {
                let first = 1 + t * per_thread;
                let mut uid = first;
                while uid < first + per_thread {
                    let end = (uid + batch).min(first + per_thread);
                    answered.fetch_add(round(addr, auth, uid..end), Ordering::Relaxed);
                    uid = end;
                }
            });
        }
    });
    answered.load(Ordering::Relaxed)
}

#[test]
fn messages_right_behind_first_message_auth_are_all_answered() {
    let e = Engine::start_with(&protocol(), 2, |_| {});
    let total = 10_000;
    let answered = run(&e, Auth::FirstMessage, total, 8, 50);
    assert_eq!(answered, total as usize, "sockets with both answers");
    e.wait_all_closed(Duration::from_secs(20), "every test socket closed");
    e.stop();
}

#[test]
fn messages_written_with_the_upgrade_request_are_all_answered() {
    let e = Engine::start_with(&protocol(), 2, |_| {});
    let total = 2_000;
    let answered = run(&e, Auth::HeaderEarly, total, 8, 50);
    assert_eq!(answered, total as usize, "sockets with both answers");
    e.wait_all_closed(Duration::from_secs(20), "every test socket closed");
    e.stop();
}

/// HTTP keep-alive: requests written back to back in one write are each answered, in order,
/// bodies included (a body's bytes must not swallow the next request's head).
#[test]
fn pipelined_http_requests_on_one_connection_are_each_answered() {
    let e = Engine::start_with(&protocol(), 2, |_| {});
    let body = json!({"room": "location:seeker:1",
        "message": {"type": "providers_nearby", "providers": []}})
    .to_string();
    let publish = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let health = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let last = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut s = TcpStream::connect(e.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let all = format!("{publish}{health}{publish}{last}");
    s.write_all(all.as_bytes()).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    let statuses: Vec<&str> = got.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
    assert_eq!(statuses, ["200", "200", "200", "200"], "{got}");
    assert_eq!(got.matches("\"delivered\":0").count(), 2, "{got}");
    e.stop();
}
