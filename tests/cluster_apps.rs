//! Seed apps' flows split across Beacon nodes (`[cluster]`, README "Several nodes"): for each
//! app, the publisher, the subscribers and the senders on different nodes of three, with a real
//! `redis-server` (and `nats-server` where the flow needs no shared state), real `beacon serve`
//! processes and a stand-in backend for the apps' hooks and forwards. VISIBLE's geo flows are
//! in tests/cluster_geo.rs. Conditions are waited for with generous bounds, never timed
//! tightly.

mod apps_support;
mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};

fn node(redis: &Broker, protocol: &str, name: &str, backend: &str) -> BeaconProcess {
    node_with(redis, protocol, name, backend, "")
}

/// A node whose config starts with `head` (e.g. keys).
fn node_with(
    redis: &Broker,
    protocol: &str,
    name: &str,
    backend: &str,
    head: &str,
) -> BeaconProcess {
    let cfg = format!(
        "backend_url = \"{backend}\"\n{head}\n[cluster]\nbroker = \"{}\"\nurl = \"{}\"\nnode_id = \"{name}\"\n",
        redis.kind.name(),
        redis.url()
    );
    let env = [(
        "BEACON_ISSUED_SECRET",
        "a-secret-every-node-shares-0123456789",
    )];
    let n = BeaconProcess::start_with_env(&root().join(protocol), &cfg, &[], &env);
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

fn three(
    kind: Kind,
    proto: &str,
    backend: &str,
    head: &str,
) -> Option<(Broker, Vec<BeaconProcess>)> {
    let broker = Broker::start(kind, free_port())?;
    let nodes = (1..=3)
        .map(|i| node_with(&broker, proto, &format!("n{i}"), backend, head))
        .collect();
    Some((broker, nodes))
}

/// The next message of `ty`, skipping others (presence, welcomes).
fn next_of(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let m = recv(ws);
        if m["type"] == ty {
            return m;
        }
    }
}

both!(
    hunarmitra_across_nodes,
    hunarmitra_booking_flows_across_nodes_redis,
    hunarmitra_booking_flows_across_nodes_nats
);
/// HunarMitra: the owner on node 1 and the worker on node 2 (each admitted by the booking hook
/// on its own node); the backend publishes a status through node 3; the worker posts its
/// location to node 3's tracking endpoint; a notification published on node 1 reaches the
/// worker's notification socket on node 2.
fn hunarmitra_across_nodes(kind: Kind) {
    let backend = apps_support::Backend::start(|_, req| {
        let ok = req["path"]["booking_id"].as_str() == Some("b-1")
            && [10, 11].contains(&req["user_id"].as_i64().unwrap_or(0));
        (200, format!(r#"{{"allow": {ok}}}"#))
    });
    let Some((_broker, nodes)) =
        three(kind, "config/protocols/hunarmitra.toml", &backend.url(), "")
    else {
        return;
    };
    let owner = token(json!(10), json!({"role": "customer", "name": "Asha"}));
    let worker = token(json!(11), json!({"role": "worker", "name": "Worker Name"}));
    let mut owner_ws = connect(&format!(
        "ws://{}/ws/bookings/b-1/?token={owner}",
        nodes[0].addr
    ));
    assert_eq!(recv(&mut owner_ws)["type"], "connection_established");
    let mut worker_ws = connect(&format!(
        "ws://{}/ws/bookings/b-1/?token={worker}",
        nodes[1].addr
    ));
    assert_eq!(recv(&mut worker_ws)["type"], "connection_established");

    let status = json!({
        "type": "booking_status", "booking_id": "b-1", "status": "on_the_way",
        "event_type": "booking_on_the_way", "actor": "Worker Name",
        "timestamp": "2026-01-03T11:00:00Z"
    });
    let (code, r) = publish(
        nodes[2].addr,
        json!({"room": "booking:b-1", "message": status}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        unpositioned(next_of(&mut owner_ws, "booking_status")),
        status
    );
    assert_eq!(
        unpositioned(next_of(&mut worker_ws, "booking_status")),
        status
    );

    let bearer = format!("Bearer {worker}");
    let body = json!({"lat": 28.6139, "lng": 77.209, "timestamp": "2026-01-03T11:05:00Z"});
    let (code, text) = http(
        nodes[2].addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{text}");
    let want = json!({"type": "location_update", "booking_id": "b-1", "lat": 28.6139,
                      "lng": 77.209, "timestamp": "2026-01-03T11:05:00Z", "actor": "Worker Name"});
    assert_eq!(next_of(&mut owner_ws, "location_update"), want);

    let mut inbox = connect(&format!(
        "ws://{}/ws/notifications/?token={worker}",
        nodes[1].addr
    ));
    let note = json!({"type": "notification", "title": "Booking", "message": "New booking"});
    let (code, r) = publish(nodes[0].addr, json!({"room": "user:11", "message": note}));
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        next_of(&mut inbox, "notification")["message"],
        "New booking"
    );
}

both!(
    therapy_across_nodes,
    therapy_chat_and_location_across_nodes_redis,
    therapy_chat_and_location_across_nodes_nats
);
/// Therapy: the customer on node 1 and the therapist on node 2 chat (each message stored by
/// the backend through the sender's node, then fanned out to both nodes); the therapist's
/// location reaches the customer on node 3; the customer's location is refused.
fn therapy_across_nodes(kind: Kind) {
    let next = std::sync::atomic::AtomicU64::new(1);
    let backend = apps_support::Backend::start(move |path, req| {
        if path == "/internal/beacon/therapy/authorize/" {
            let pair = req["path"] == json!({"customer_id": "123", "therapist_id": "456"});
            let answer = match req["user_id"].as_i64() {
                Some(123) if pair => json!({"allow": true, "facts": {"role": "customer"}}),
                Some(456) if pair => json!({"allow": true, "facts": {"role": "therapist"}}),
                _ => json!({"allow": false}),
            };
            return (200, answer.to_string());
        }
        let id = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Forwards send the sender's id as a number when it is one; the message says it as text.
        let sender = match &req["user_id"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let answer = json!({"broadcast": {
            "message": req["message"]["message"], "sender_id": sender,
            "message_id": id.to_string(), "timestamp": "2024-01-15T10:30:00.123456Z"}});
        (200, answer.to_string())
    });
    let Some((_broker, nodes)) = three(kind, "config/protocols/therapy.toml", &backend.url(), "")
    else {
        return;
    };
    let cust_t = token(json!(123), json!({"role": "customer"}));
    let ther_t = token(json!(456), json!({"role": "therapist"}));
    let mut cust = connect(&format!(
        "ws://{}/ws/chat/123/456/?token={cust_t}",
        nodes[0].addr
    ));
    let mut ther = connect(&format!(
        "ws://{}/ws/chat/123/456/?token={ther_t}",
        nodes[1].addr
    ));
    send(&mut cust, json!({"message": "Hello, how are you today?"}));
    for ws in [&mut cust, &mut ther] {
        let m = next_of(ws, "message");
        assert_eq!(m["message"], "Hello, how are you today?");
        assert_eq!(m["sender_id"], "123");
    }
    send(&mut ther, json!({"message": "I'm well"}));
    for ws in [&mut cust, &mut ther] {
        let m = next_of(ws, "message");
        assert_eq!(
            (&m["message"], &m["sender_id"]),
            (&json!("I'm well"), &json!("456"))
        );
    }

    let mut cust_loc = connect(&format!(
        "ws://{}/ws/location/123/456/?token={cust_t}",
        nodes[2].addr
    ));
    let mut ther_loc = connect(&format!(
        "ws://{}/ws/location/123/456/?token={ther_t}",
        nodes[1].addr
    ));
    send(&mut cust_loc, json!({"latitude": 1.0, "longitude": 2.0}));
    send(
        &mut ther_loc,
        json!({"latitude": 40.7128, "longitude": -74.006}),
    );
    let want = json!({"type": "location", "latitude": 40.7128, "longitude": -74.006, "therapist_id": "456"});
    // The customer's own location was not shared: the first location anyone hears is the
    // therapist's.
    assert_eq!(unpositioned(next_of(&mut cust_loc, "location")), want);
    assert_eq!(unpositioned(next_of(&mut ther_loc, "location")), want);
}

both!(
    smartparking_across_nodes,
    smartparking_filters_across_nodes_redis,
    smartparking_filters_across_nodes_nats
);
/// Smart Parking: ws-tokens minted on node 1 open sockets on nodes 2 and 3 (a shared key);
/// notifications published on node 1 reach both, and the narrowed socket only the kinds it
/// subscribed to.
fn smartparking_across_nodes(kind: Kind) {
    let keys = "[keys.jwt]\nsecret_env = \"BEACON_JWT_SECRET\"\n\n[keys.issued]\nsecret_env = \"BEACON_ISSUED_SECRET\"\n";
    let Some((_broker, nodes)) = three(
        kind,
        "config/protocols/smartparking.toml",
        "http://127.0.0.1:9",
        keys,
    ) else {
        return;
    };
    let mint = || {
        let bearer = format!("Bearer {}", token(json!(8), json!({})));
        let (code, body) = http(
            nodes[0].addr,
            "GET",
            "/api/user/ws-token/",
            &[("Authorization", &bearer)],
            b"",
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["ws_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut narrow = connect(&format!(
        "ws://{}/ws/notifications/?token={}",
        nodes[1].addr,
        mint()
    ));
    let mut all = connect(&format!(
        "ws://{}/ws/notifications/?token={}",
        nodes[2].addr,
        mint()
    ));
    send(
        &mut narrow,
        json!({"type": "subscribe", "notification_types": ["reservation"]}),
    );
    // The protocol declares no ping: an invalid message's error proves the subscribe was read.
    send(&mut narrow, json!({"type": "subscribe"}));
    assert_eq!(recv(&mut narrow)["code"], "invalid_message");
    for k in ["payment", "reservation"] {
        let n = json!({"type": "notification", "message": k, "notification_type": k});
        let (code, r) = publish(nodes[0].addr, json!({"room": "user:8", "message": n}));
        assert_eq!(code, 200, "{r}");
    }
    assert_eq!(recv(&mut all)["message"], "payment");
    assert_eq!(recv(&mut all)["message"], "reservation");
    assert_eq!(recv(&mut narrow)["message"], "reservation");
}
