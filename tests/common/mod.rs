//! Test harness: a real engine on port 0 (in-process shards or the real binary), real
//! WebSocket clients (tungstenite over std TCP), real HTTP over TCP, tokens minted like Django
//! simplejwt does.
#![allow(dead_code)]

mod cluster;
mod django;
mod external;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use django::*;
#[allow(unused_imports)]
pub use external::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use beacon::config::Config;
use beacon::protocol::load_protocol;
use beacon::runtime::{request_shutdown, Server, Shared};
use beacon::startup::{self, Checked};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long!!";
pub const API_KEY: &str = "test-api-key";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A Django simplejwt-shaped access token.
/// A token with the `member` role for `uid` (what the fixtures' member-only endpoints admit).
pub fn member(uid: u64) -> String {
    token(json!(uid), json!({"role": "member"}))
}

pub fn token(user_id: Value, extra: Value) -> String {
    token_with(
        SECRET,
        jsonwebtoken::Algorithm::HS256,
        user_id,
        extra,
        now() + 3600,
    )
}

pub fn token_with(
    secret: &str,
    alg: jsonwebtoken::Algorithm,
    user_id: Value,
    extra: Value,
    exp: u64,
) -> String {
    let mut claims = json!({
        "token_type": "access",
        "exp": exp,
        "iat": now(),
        "jti": "0123456789abcdef",
        "user_id": user_id,
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
        c.extend(e);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An in-process engine: real shards, real listener on 127.0.0.1:0.
pub struct Engine {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    server: Option<Server>,
}

impl Engine {
    pub fn start(protocol_src: &str) -> Engine {
        Engine::start_with(protocol_src, 2, |_| {})
    }

    pub fn start_with(
        protocol_src: &str,
        shards: usize,
        tweak: impl FnOnce(&mut Config),
    ) -> Engine {
        let protocol = load_protocol(protocol_src).unwrap_or_else(|d| {
            panic!(
                "{}",
                beacon::protocol::render("test.toml", protocol_src, &d)
            )
        });
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            drain_ms: 300,
            ..Config::default()
        };
        tweak(&mut config);
        let checked = Checked {
            protocol,
            config,
            protocol_src: protocol_src.to_owned(),
            warnings: String::new(),
        };
        let env = |k: &str| (k == "BEACON_JWT_SECRET").then(|| SECRET.to_owned());
        let verifiers = startup::verifiers(&checked, Path::new("test.toml"), &env)
            .unwrap_or_else(|e| panic!("{e}"));
        let shared = startup::shared(checked, verifiers, Some(API_KEY.to_owned()), shards);
        let server = Server::start(shared.clone()).expect("engine starts");
        Engine {
            addr: server.local_addr,
            shared,
            server: Some(server),
        }
    }

    pub fn default_protocol() -> Engine {
        Engine::start(&std::fs::read_to_string(root().join("protocol.toml")).unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Stops the engine and waits for every shard; panics if a shard failed.
    pub fn stop(mut self) {
        if let Some(s) = self.server.take() {
            request_shutdown(&self.shared);
            s.join().expect("shards exit cleanly");
        }
    }

    pub fn metrics(&self) -> String {
        http(self.addr, "GET", "/metrics", &[], b"").1
    }

    /// Sum of a metric across label sets whose rendered labels contain every `filter` part.
    pub fn metric(&self, name: &str, filter: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, filter)
    }

    /// Waits until no connection is open; fails with `why` after `within`.
    pub fn wait_all_closed(&self, within: std::time::Duration, why: &str) {
        let deadline = std::time::Instant::now() + within;
        while self.metric("beacon_connections", &[]) > 0.0 {
            assert!(std::time::Instant::now() < deadline, "{why}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            request_shutdown(&self.shared);
            let _ = s.join();
        }
    }
}

pub fn metric_sum(text: &str, name: &str, filter: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| filter.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub type Ws = WebSocket<TcpStream>;

/// Connects; returns the socket or the HTTP status of a refused upgrade.
pub fn connect_req(req: tungstenite::handshake::client::Request) -> Result<Ws, u16> {
    let uri = req.uri().clone();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

pub fn connect(url: &str) -> Ws {
    connect_req(url.into_client_request().unwrap()).expect("upgrade accepted")
}

pub fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    connect_req(req)
}

/// Next JSON text message (pings are answered by tungstenite itself).
pub fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("message") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON text"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// A message that entered its room's history, without the position Beacon added (`offset`, a
/// positive integer, and `epoch`, text), both checked to be there: for comparing whole frames
/// with their documented shape.
pub fn unpositioned(mut v: Value) -> Value {
    let o = v.as_object_mut().expect("a JSON object");
    let offset = o.remove("offset");
    assert!(
        offset
            .as_ref()
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0),
        "no offset: {offset:?}"
    );
    let epoch = o.remove("epoch");
    assert!(
        epoch.as_ref().is_some_and(Value::is_string),
        "no epoch: {epoch:?}"
    );
    v
}

/// Reads until the server closes; returns (code, reason).
pub fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                panic!("closed without a close frame")
            }
            Err(e) => panic!("read error before close frame: {e}"),
        }
    }
}

pub fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// Asserts no text message arrives within `ms` (used after a negative action; the timeout is
/// a bound on waiting, never a measured speed).
pub fn assert_silent(ws: &mut Ws, ms: u64) {
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(ms)))
        .unwrap();
    match ws.read() {
        Ok(Message::Text(t)) => panic!("unexpected message: {t}"),
        Ok(_) => {}
        Err(e) if timed_out(&e) => {}
        Err(e) => panic!("unexpected error: {e}"),
    }
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

/// Whether a read failed only because its read timeout passed.
pub fn timed_out(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e)
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body);
    (status, body)
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, head, body).
pub fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) and stop reading before the body is sent.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

pub fn publish(addr: SocketAddr, body: Value) -> (u16, Value) {
    post_api(addr, "/api/publish", body)
}

/// The next message, which must be of type `ty`.
pub fn expect(ws: &mut Ws, ty: &str) -> Value {
    let m = recv(ws);
    assert_eq!(m["type"], ty, "{m}");
    m
}

/// The `provider_id`s of a geo answer's provider list, in its order.
pub fn provider_ids(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["provider_id"].as_u64().unwrap())
        .collect()
}

/// A JSON `POST` to an API path with the API key; the answer's status and JSON (null if none).
pub fn post_api(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, text) = http(
        addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Path to the `beacon` binary built next to this test executable, building it if needed.
pub fn beacon_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("beacon");
    if !bin.exists() {
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let st = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "beacon", "--bin", "beacon"])
            .args(profile)
            .status()
            .unwrap();
        assert!(st.success());
    }
    bin
}

/// The real `beacon serve` binary on 127.0.0.1:0, killed on drop.
pub struct BinServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl BinServer {
    pub fn start(protocol: &str, config: &str) -> BinServer {
        BinServer::start_with(protocol, config, &[], &[])
    }

    /// `wrapper` runs the binary under another program (e.g. `prlimit --nofile=48:48 --`);
    /// `env` adds variables.
    pub fn start_with(
        protocol: &str,
        config: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> BinServer {
        use std::io::BufRead;
        let bin = beacon_bin();
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = std::process::Command::new(prog);
                c.args(args).arg(&bin);
                c
            }
            None => std::process::Command::new(&bin),
        };
        let mut child = cmd
            .current_dir(root())
            .args([
                "serve",
                "--protocol",
                protocol,
                "--config",
                config,
                "--listen",
                "127.0.0.1:0",
            ])
            .env("BEACON_JWT_SECRET", SECRET)
            .env("BEACON_API_KEY", API_KEY)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = lines.next().expect("beacon prints its address").unwrap();
        let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
        BinServer { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for exit; returns the exit code.
    pub fn wait(mut self) -> i32 {
        let st = self.child.wait().unwrap();
        st.code().unwrap_or(-1)
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether an external tool the test needs is present. Outside CI a missing tool skips the
/// test with a printed reason; under CI (CI=true) it is a failure, because scripts/test.sh
/// installs every tool.
pub fn have_tool(path_or_name: &str) -> bool {
    let found = if path_or_name.contains('/') {
        Path::new(path_or_name).exists()
    } else {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {path_or_name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{path_or_name} is required under CI (scripts/test.sh installs it)"
        );
        eprintln!("skipping: {path_or_name} not installed (run scripts/test.sh)");
    }
    found
}
