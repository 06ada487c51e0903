//! Helpers for tests of Beacon nodes sharing rooms over a real broker (`[cluster]`): starting
//! nodes, readiness, joining rooms, publishing, reading numbered messages, resuming history.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};

use super::{
    connect, eventually, http, member, metric_sum, publish, recv, token, BeaconProcess, Ws,
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
