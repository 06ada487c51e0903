//! Support for the seed-app end-to-end tests: the real `beacon` binary serving one protocol
//! file on a free port, and a small real HTTP server playing the app's backend for hooks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{self, API_KEY, SECRET};

/// The `beacon` binary serving a protocol file. Killed on drop.
pub struct Binary {
    pub addr: SocketAddr,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Binary {
    /// `backend`: the URL hooks call (`BEACON_BACKEND_URL`). Two shards.
    pub fn start(protocol: &str, backend: &str) -> Binary {
        Binary::start_with(protocol, backend, 2)
    }

    pub fn start_with(protocol: &str, backend: &str, shards: usize) -> Binary {
        Binary::launch(protocol, backend, shards, None)
    }

    /// On a port chosen beforehand (a backend that publishes to Beacon is told it before
    /// Beacon starts; a restarted Beacon comes back where its clients and backend expect it).
    pub fn start_on(protocol: &str, backend: &str, port: u16) -> Binary {
        Binary::launch(protocol, backend, 2, Some(port))
    }

    fn launch(protocol: &str, backend: &str, shards: usize, fixed: Option<u16>) -> Binary {
        let root = common::root();
        let bin = common::beacon_bin();
        for _ in 0..5 {
            let port = fixed.unwrap_or_else(free_port);
            let mut child = Command::new(&bin)
                .current_dir(&root)
                .args([
                    "serve",
                    "--protocol",
                    protocol,
                    "--config",
                    "config/beacon.toml",
                ])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--shards", &shards.to_string()])
                .env("BEACON_JWT_SECRET", SECRET)
                .env("BEACON_API_KEY", API_KEY)
                .env("BEACON_BACKEND_URL", backend)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("beacon binary starts");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile, or a startup error: try again / fail below
                }
                if TcpStream::connect(addr).is_ok()
                    && common::http(addr, "GET", "/healthz", &[], b"").0 == 200
                {
                    return Binary { addr, child };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("beacon did not start with {protocol}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn metrics(&self) -> String {
        common::http(self.addr, "GET", "/metrics", &[], b"").1
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the fake backend answers: (status, JSON body text).
pub type Handler = dyn Fn(&str, &Value) -> (u16, String) + Send + Sync;

/// A real HTTP/1.1 server on 127.0.0.1:0 playing the app's backend. Stops on drop.
pub struct Backend {
    pub addr: SocketAddr,
    /// Every request seen: (path, JSON body).
    pub requests: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub fn start(
        handler: impl Fn(&str, &Value) -> (u16, String) + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stopping) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (h, r) = (handler.clone(), reqs.clone());
                std::thread::spawn(move || serve_one(conn, &*h, &r));
            }
        });
        Backend {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(conn: TcpStream, handler: &Handler, requests: &Mutex<Vec<(String, Value)>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    requests.lock().unwrap().push((path.clone(), json.clone()));
    let (status, text) = handler(&path, &json);
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let mut conn = conn;
    let _ = conn.write_all(resp.as_bytes());
}

/// An address nothing listens on (for "backend down" tests).
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[allow(unused_imports)]
pub use super::common::http_full;

/// Waits until `members` sockets are in `room`: a socket sees its upgrade answer before its
/// owner shard has registered it, so tests publish a marker until all of them get it.
/// Returns the marker that reached everyone; [`skip_to`] reads past the earlier ones.
pub fn settle(addr: SocketAddr, room: &str, make: impl Fn(&str) -> Value, members: u64) -> String {
    for i in 0..500 {
        let marker = format!("sync-{i}");
        let (code, r) = common::publish(
            addr,
            serde_json::json!({"room": room, "message": make(&marker)}),
        );
        assert_eq!(code, 200, "{r}");
        if r["delivered"].as_u64() == Some(members) {
            return marker;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{room} never reached {members} members");
}

/// Reads messages until one contains the string `marker` anywhere.
pub fn skip_to(ws: &mut common::Ws, marker: &str) {
    fn has(v: &Value, marker: &str) -> bool {
        match v {
            Value::String(s) => s == marker,
            Value::Object(o) => o.values().any(|v| has(v, marker)),
            Value::Array(a) => a.iter().any(|v| has(v, marker)),
            _ => false,
        }
    }
    while !has(&common::recv(ws), marker) {}
}
