//! Helpers for tests of Beacon nodes sharing rooms over a real broker (`[cluster]`): starting
//! nodes, readiness, joining rooms, publishing, reading numbered messages, resuming history.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};

/// A test per broker: `both!(case, case_redis, case_nats)` runs `case(Kind::Redis)` and
/// `case(Kind::Nats)`.
// Like the helpers, used by some of the test crates that include this module.
#[allow(unused_macros)]
macro_rules! both {
    ($case:ident, $redis:ident, $nats:ident) => {
        #[test]
        fn $redis() {
            $case(Kind::Redis)
        }
        #[test]
        fn $nats() {
            $case(Kind::Nats)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both;

use super::{
    beacon_bin, connect, eventually, http, member, metric_sum, publish, recv, token, BeaconProcess,
    TempDir, Ws, API_KEY, SECRET,
};

pub fn readyz(addr: SocketAddr) -> u16 {
    http(addr, "GET", "/readyz", &[], b"").0
}

pub fn wait_ready(addr: SocketAddr) {
    eventually(30, "node ready", || (readyz(addr) == 200).then_some(()));
}

/// A `beacon serve` with `protocol` and the `[cluster]` section `cluster` (whose `node_id` is
/// set to `name`), once it says it is ready.
pub fn cluster_node(protocol: &Path, cluster: &str, name: &str) -> BeaconProcess {
    let n = BeaconProcess::start(
        protocol,
        &format!("[cluster]\n{cluster}node_id = \"{name}\"\n"),
        &[],
    );
    wait_ready(n.addr);
    n
}

/// A member of `room` (`/ws/rooms/<room>/`), once welcomed.
pub fn join(addr: SocketAddr, room: &str, uid: u64) -> Ws {
    let mut ws = connect(&format!(
        "ws://{addr}/ws/rooms/{room}/?token={}",
        member(uid)
    ));
    assert_eq!(recv(&mut ws)["type"], "welcome");
    ws
}

/// Next message that is not presence (members of a shared room hear each other arrive).
pub fn recv_said(ws: &mut Ws) -> Value {
    loop {
        let v = recv(ws);
        if v["type"] != "presence" {
            return v;
        }
    }
}

/// Publishes `said` with `text` to `room:<room>` through the publish API.
pub fn say(addr: SocketAddr, room: &str, text: &str) -> (u16, Value) {
    publish(
        addr,
        json!({"room": format!("room:{room}"), "message": {"type": "said", "text": text}}),
    )
}

pub fn metric(addr: SocketAddr, name: &str, filter: &[&str]) -> f64 {
    metric_sum(&http(addr, "GET", "/metrics", &[], b"").1, name, filter)
}

/// A room position as the client keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pos {
    pub offset: u64,
    pub epoch: String,
}

pub fn pos(v: &Value) -> Pos {
    Pos {
        offset: v["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset: {v}")),
        epoch: v["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no epoch: {v}"))
            .to_owned(),
    }
}

/// Opens `/ws/rooms/<room>/` resuming from `since` (`None`: no position yet) and reads the
/// welcome (tests/fixtures/history.toml).
pub fn open_room(addr: SocketAddr, room: &str, uid: u64, since: Option<&Pos>) -> Ws {
    let tok = token(json!(uid), json!({}));
    let mut url = format!("ws://{addr}/ws/rooms/{room}/?token={tok}");
    match since {
        Some(p) => url.push_str(&format!("&since={}&epoch={}", p.offset, p.epoch)),
        None => url.push_str("&since="),
    }
    let mut ws = connect(&url);
    assert_eq!(recv(&mut ws)["type"], "welcome");
    ws
}

/// Reads `said` messages (text, position) until the catch-up's answer; returns both.
pub fn catch_up(ws: &mut Ws) -> (Vec<(String, Pos)>, Value) {
    let mut got = Vec::new();
    loop {
        let v = recv(ws);
        match v["type"].as_str() {
            Some("said") => got.push((v["text"].as_str().unwrap().to_owned(), pos(&v))),
            Some("resumed" | "reload") => return (got, v),
            _ => panic!("unexpected {v}"),
        }
    }
}

/// `beacon serve` with `protocol` and the config file text `config`, expected to refuse to
/// start (exit 1); returns its one `beacon: ...` line.
pub fn serve_refused(protocol: &Path, config: &str) -> String {
    let dir = TempDir::new("refused");
    let cfg = dir.path().join("beacon.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = std::process::Command::new(beacon_bin())
        .arg("serve")
        .arg("--protocol")
        .arg(protocol)
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0"])
        .env("BEACON_JWT_SECRET", SECRET)
        .env("BEACON_API_KEY", API_KEY)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    err.lines()
        .find(|l| l.starts_with("beacon: "))
        .unwrap_or_else(|| panic!("{err}"))
        .to_owned()
}
