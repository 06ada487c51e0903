//! Seed apps' flows split across Beacon nodes (`[cluster]`, README "Several nodes"): presence
//! per user across nodes (UmEmployed chat), with a real `redis-server`, real `beacon serve`
//! processes and a stand-in backend for the apps' hooks. Conditions are waited for with
//! generous bounds, never timed tightly.

mod apps_support;
mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};

fn node(redis: &Broker, protocol: &str, name: &str, backend: &str) -> BeaconProcess {
    let cfg = format!(
        "backend_url = \"{backend}\"\n[cluster]\nbroker = \"{}\"\nurl = \"{}\"\nnode_id = \"{name}\"\n",
        redis.kind.name(),
        redis.url()
    );
    let n = BeaconProcess::start(&root().join(protocol), &cfg, &[]);
    eventually(20, "node ready", || {
        (http(n.addr, "GET", "/readyz", &[], b"").0 == 200).then_some(())
    });
    n
}

/// Publishes a chat marker into `room` through `addr` and reads `ws` up to it; returns the
/// `user_status` messages read before it.
fn statuses_until_marker(ws: &mut Ws, addr: SocketAddr, room: &str, marker: &str) -> Vec<Value> {
    let (code, r) = publish(
        addr,
        json!({"room": room, "message": {"type": "chat_message", "message": {"content": marker}}}),
    );
    assert_eq!(code, 200, "{r}");
    let mut seen = Vec::new();
    loop {
        let m = recv(ws);
        if m["message"]["content"] == marker {
            return seen;
        }
        if m["type"] == "user_status" {
            seen.push(m);
        }
    }
}

fn next_status(ws: &mut Ws) -> Value {
    loop {
        let m = recv(ws);
        if m["type"] == "user_status" {
            return m;
        }
    }
}

fn status(user: u64, s: &str) -> Value {
    json!({"type": "user_status", "user_id": user, "status": s})
}

#[test]
fn presence_is_per_user_across_nodes() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    // Conversation 5 has participants 1, 2 and 3.
    let backend = apps_support::Backend::start(|_, req| {
        let ok = req["path"]["conversation_id"].as_str() == Some("5")
            && (1..=3).contains(&req["user_id"].as_i64().unwrap_or(0));
        (200, format!(r#"{{"allow": {ok}}}"#))
    });
    let url = backend.url();
    let proto = "config/protocols/umemployed.toml";
    let mut nodes: Vec<Option<BeaconProcess>> = (1..=3)
        .map(|i| Some(node(&redis, proto, &format!("n{i}"), &url)))
        .collect();
    let addr = |i: usize, nodes: &[Option<BeaconProcess>]| nodes[i].as_ref().unwrap().addr;
    let join = |a: SocketAddr, user: u64| {
        connect(&format!(
            "ws://{a}/ws/chat/5/?token={}",
            token(json!(user), json!({}))
        ))
    };
    let key = "beacon.presence.chat:5";
    let fields = |redis: &Broker| redis.redis_cli(&["HKEYS", key]);

    let mut john = join(addr(0, &nodes), 1);
    // Jane's first tab, on node 2: John (node 1) hears her come online; her socket is told
    // John is online although he is on another node.
    let mut tab1 = join(addr(1, &nodes), 2);
    assert_eq!(next_status(&mut john), status(2, "online"));
    assert_eq!(next_status(&mut tab1), status(1, "online"));
    // Her second tab, on node 3: nobody hears her again; the tab learns John is online.
    let mut tab2 = join(addr(2, &nodes), 2);
    assert_eq!(next_status(&mut tab2), status(1, "online"));
    eventually(10, "both tabs counted", || {
        let f = fields(&redis);
        (f.contains("2|n2") && f.contains("2|n3")).then_some(())
    });
    assert_eq!(
        statuses_until_marker(&mut john, addr(0, &nodes), "chat:5", "m1"),
        Vec::<Value>::new()
    );
    // The first tab closes: she is still online on node 3, so nothing is announced.
    tab1.close(None).unwrap();
    let _ = tab1.flush();
    eventually(10, "the first tab counted out", || {
        (!fields(&redis).contains("2|n2")).then_some(())
    });
    assert_eq!(
        statuses_until_marker(&mut john, addr(0, &nodes), "chat:5", "m2"),
        Vec::<Value>::new()
    );
    // The second closes: offline, once.
    tab2.close(None).unwrap();
    let _ = tab2.flush();
    assert_eq!(next_status(&mut john), status(2, "offline"));

    // Jane again on node 3, which is then killed: no socket says goodbye, but her count there
    // stops counting once the node's alive key expires (15 s): Bob joining on node 2 is told
    // only John is online, and Jane reconnecting on node 2 is announced again.
    let _tab3 = join(addr(2, &nodes), 2);
    assert_eq!(next_status(&mut john), status(2, "online"));
    signal(nodes[2].as_ref().unwrap().child.id(), "KILL");
    nodes[2].take();
    eventually(40, "node 3's alive key expires", || {
        (redis.redis_cli(&["EXISTS", "beacon.alive.n3"]).trim() == "0").then_some(())
    });
    let mut bob = join(addr(1, &nodes), 3);
    assert_eq!(next_status(&mut john), status(3, "online"));
    assert_eq!(
        statuses_until_marker(&mut bob, addr(1, &nodes), "chat:5", "m3"),
        vec![status(1, "online")]
    );
    let _back = join(addr(1, &nodes), 2);
    assert_eq!(next_status(&mut john), status(2, "online"));
    assert_eq!(next_status(&mut bob), status(2, "online"));
}
