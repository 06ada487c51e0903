//! Geo across Beacon nodes (`[cluster]` on Redis, README "Several nodes"): the VISIBLE app's
//! flows (config/protocols/visible.toml) with providers, seekers and the dispatching backend on
//! different nodes of three, a real `redis-server` and a real backend recording work
//! responses. Conditions are waited for with generous bounds, never timed tightly.

mod apps_support;
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

const CENTRE: (f64, f64) = (11.2588, 75.8577);
const DEG_PER_KM: f64 = 180.0 / (std::f64::consts::PI * beacon::geo::EARTH_RADIUS_KM);

fn north(km: f64) -> (f64, f64) {
    (CENTRE.0 + km * DEG_PER_KM, CENTRE.1)
}

fn protocol() -> PathBuf {
    root().join("config/protocols/visible.toml")
}

fn node(redis: &Broker, name: &str, backend: &str) -> BeaconProcess {
    let cfg = format!(
        "backend_url = \"{backend}\"\n[cluster]\nbroker = \"redis\"\nurl = \"{}\"\nnode_id = \"{name}\"\n",
        redis.url()
    );
    let n = BeaconProcess::start(&protocol(), &cfg, &[]);
    eventually(20, "node ready", || {
        (http(n.addr, "GET", "/readyz", &[], b"").0 == 200).then_some(())
    });
    n
}

fn open(addr: SocketAddr, path: &str, user: u64) -> Ws {
    let bearer = format!("Bearer {}", token(json!(user), json!({})));
    let mut ws = connect_with(&format!("ws://{addr}{path}"), &[("Authorization", &bearer)])
        .expect("upgrade accepted");
    // Answered by the socket's own shard: the socket has joined its home room.
    send(&mut ws, json!({"type": "no_such_message"}));
    assert_eq!(recv(&mut ws)["code"], "unknown_type");
    ws
}

fn go_active(ws: &mut Ws, sub: &str, at: (f64, f64)) {
    send(
        ws,
        json!({"type": "provider_status_update", "active": true, "category_code": "MS0001",
               "subcategory_code": sub, "latitude": at.0, "longitude": at.1}),
    );
}

fn search(ws: &mut Ws, radius_km: f64) -> Vec<u64> {
    send(
        ws,
        json!({"type": "seeker_search_update", "searching": true, "latitude": CENTRE.0,
               "longitude": CENTRE.1, "category_code": "MS0001", "distance_radius": radius_km}),
    );
    let r = expect(ws, "providers_nearby");
    r["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["provider_id"].as_u64().unwrap())
        .collect()
}

fn expect(ws: &mut Ws, ty: &str) -> Value {
    let m = recv(ws);
    assert_eq!(m["type"], ty, "{m}");
    m
}

fn dispatch(addr: SocketAddr, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, text) = http(
        addr,
        "POST",
        "/api/work/dispatch",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn work(id: u64, max: u64) -> Value {
    json!({
        "work_id": id, "service_type": "worker", "message": "Need help with painting",
        "latitude": CENTRE.0, "longitude": CENTRE.1, "category_code": "MS0001",
        "subcategory_code": "SS0001", "distance_radius": 5, "max_providers": max,
        "seeker": {"user_id": 456, "name": "John Doe"}
    })
}

/// Waits until some node holds the geo home's lease and has subscribed to the geo channel;
/// returns its name.
fn geo_home(redis: &Broker) -> String {
    eventually(20, "a geo home", || {
        let h = redis.redis_cli(&["GET", "beacon.geo.home"]);
        let subs = redis.redis_cli(&["PUBSUB", "NUMSUB", "beacon.geo"]);
        (!h.trim().is_empty() && subs.split_whitespace().nth(1) == Some("1"))
            .then(|| h.trim().to_owned())
    })
}

#[test]
fn seekers_find_and_follow_providers_on_other_nodes_and_one_acceptance_wins() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let backend = apps_support::Backend::start(|_, _| (200, "{}".into()));
    let url = backend.url();
    let nodes: Vec<BeaconProcess> = (1..=3)
        .map(|i| node(&redis, &format!("n{i}"), &url))
        .collect();
    let home = geo_home(&redis);
    assert!(["n1", "n2", "n3"].contains(&home.as_str()), "{home}");

    // A standing search on node 2 hears about providers connecting to nodes 1, 3 and 2.
    let mut watcher = open(nodes[1].addr, "/ws/location/seeker/", 900);
    assert_eq!(search(&mut watcher, 50.0), Vec::<u64>::new());
    let mut loc = Vec::new();
    let mut work_ws = Vec::new();
    for (user, km, sub, at) in [
        (101, 2.5, "SS0001", 0),
        (102, 1.0, "SS0001", 2),
        (103, 4.0, "SS0001", 0),
        (104, 0.5, "SS0002", 1),
    ] {
        let mut l = open(nodes[at].addr, "/ws/location/provider/", user);
        go_active(&mut l, sub, north(km));
        let e = expect(&mut watcher, "new_provider_available");
        assert_eq!(e["provider_id"], user);
        assert_eq!(e["latitude"].as_f64().unwrap(), north(km).0, "bit for bit");
        loc.push(l);
        work_ws.push(open(nodes[at].addr, "/ws/work/provider/", user));
    }

    // A seeker on node 3 finds all four, nearest first, wherever they are connected.
    let mut other = open(nodes[2].addr, "/ws/location/seeker/", 901);
    assert_eq!(search(&mut other, 5.0), [104, 102, 101, 103]);

    // A provider on node 1 moving out of node 3's seeker's radius: it leaves there, and
    // node 2's wider search hears it move (once `moved_min_interval_ms` has passed since it
    // entered: the home saw the entry before the watcher did, so this sleep is a lower bound).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    send(
        &mut loc[0],
        json!({"type": "location_update", "latitude": north(30.0).0, "longitude": CENTRE.1}),
    );
    assert_eq!(
        expect(&mut other, "provider_went_offline")["provider_id"],
        101
    );
    let m = expect(&mut watcher, "provider_location_update");
    assert_eq!(m["provider_id"], 101);
    assert!(
        (m["distance_km"].as_f64().unwrap() - 30.0).abs() < 1e-6,
        "{m}"
    );
    send(
        &mut loc[0],
        json!({"type": "location_update", "latitude": north(2.5).0, "longitude": CENTRE.1}),
    );
    assert_eq!(
        expect(&mut other, "new_provider_available")["provider_id"],
        101
    );

    // A provider's socket on node 1 closing: seekers on nodes 2 and 3 hear it left.
    let gone = loc.remove(2);
    drop(gone);
    for ws in [&mut watcher, &mut other] {
        loop {
            let m = recv(ws);
            if m["type"] == "provider_location_update" {
                continue;
            }
            assert_eq!(m["type"], "provider_went_offline", "{m}");
            assert_eq!(m["provider_id"], 103);
            break;
        }
    }

    // Dispatch from node 2's API: the nearest two matching providers (on nodes 3 and 1) are
    // offered the work; the seeker is on node 3.
    let mut seeker = open(nodes[2].addr, "/ws/work/seeker/", 456);
    let (status, r) = dispatch(nodes[1].addr, work(123, 2));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["provider_ids"], json!([102, 101]));
    assert_eq!(
        expect(&mut work_ws[1], "work_assignment")["distance"],
        "1.0km"
    );
    assert_eq!(
        expect(&mut work_ws[0], "work_assignment")["distance"],
        "2.5km"
    );

    // Both accept at once from two nodes: exactly one reaches the seeker, the other is told
    // the work is taken.
    for w in [0, 1] {
        send(
            &mut work_ws[w],
            json!({"type": "work_response", "work_id": 123, "response": "accepted"}),
        );
    }
    let won = expect(&mut seeker, "work_response");
    let winner = won["provider_id"].as_u64().unwrap();
    assert!([101, 102].contains(&winner), "{won}");
    let loser = if winner == 101 { 1 } else { 0 };
    assert_eq!(expect(&mut work_ws[loser], "work_taken")["work_id"], 123);
    assert_silent(&mut seeker, 500);

    // A dispatch with nobody in range answers an empty list.
    let mut far = work(124, 2);
    far["latitude"] = json!(-33.0);
    let (status, r) = dispatch(nodes[0].addr, far);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["provider_ids"], json!([]));
    drop(nodes);
    drop(redis);
}

#[test]
fn the_geo_home_moves_when_its_node_dies() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let backend = apps_support::Backend::start(|_, _| (200, "{}".into()));
    let url = backend.url();
    let mut nodes: Vec<Option<BeaconProcess>> = (1..=2)
        .map(|i| Some(node(&redis, &format!("n{i}"), &url)))
        .collect();
    let home = geo_home(&redis);
    let (dead, alive) = if home == "n1" { (0, 1) } else { (1, 0) };
    let addr = nodes[alive].as_ref().unwrap().addr;
    signal(nodes[dead].as_ref().unwrap().child.id(), "KILL");
    nodes[dead].take();
    eventually(30, "the other node takes the geo home", || {
        (geo_home(&redis) == format!("n{}", alive + 1)).then_some(())
    });
    // Pools start empty on the new home; providers are placed again by their next status
    // update, and searches work.
    let mut seeker = open(addr, "/ws/location/seeker/", 900);
    assert_eq!(search(&mut seeker, 5.0), Vec::<u64>::new());
    let mut p = open(addr, "/ws/location/provider/", 101);
    go_active(&mut p, "SS0001", north(1.0));
    assert_eq!(
        expect(&mut seeker, "new_provider_available")["provider_id"],
        101
    );
}

/// The next text message within `secs` (the socket's own read timeout is shorter).
fn recv_within(ws: &mut Ws, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
            Ok(_) => continue,
            Err(e) if timed_out(&e) && std::time::Instant::now() < deadline => continue,
            Err(e) => panic!("no message within {secs} s: {e}"),
        }
    }
}

#[test]
fn a_killed_nodes_providers_leave_the_pools() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let backend = apps_support::Backend::start(|_, _| (200, "{}".into()));
    let url = backend.url();
    let mut nodes: Vec<Option<BeaconProcess>> = (1..=3)
        .map(|i| Some(node(&redis, &format!("n{i}"), &url)))
        .collect();
    let home: usize = geo_home(&redis)[1..].parse::<usize>().unwrap() - 1;
    // The provider's node is not the home; the seeker is on a third node.
    let dead = (home + 1) % 3;
    let stays = (home + 2) % 3;
    let mut seeker = open(
        nodes[stays].as_ref().unwrap().addr,
        "/ws/location/seeker/",
        900,
    );
    assert_eq!(search(&mut seeker, 5.0), Vec::<u64>::new());
    let mut p = open(
        nodes[dead].as_ref().unwrap().addr,
        "/ws/location/provider/",
        101,
    );
    go_active(&mut p, "SS0001", north(1.0));
    assert_eq!(
        expect(&mut seeker, "new_provider_available")["provider_id"],
        101
    );
    signal(nodes[dead].as_ref().unwrap().child.id(), "KILL");
    nodes[dead].take();
    // Restarted at once under the same name (a deploy): still a new process to the home.
    nodes[dead] = Some(node(&redis, &format!("n{}", dead + 1), &url));
    // No socket closed cleanly: the home notices the old process's silence and the provider
    // leaves.
    let left = recv_within(&mut seeker, 40);
    assert_eq!(left["type"], "provider_went_offline", "{left}");
    assert_eq!(left["provider_id"], 101);
    assert_eq!(search(&mut seeker, 5.0), Vec::<u64>::new());
    drop(p);
}

#[test]
fn a_node_that_stops_being_home_starts_empty_when_it_is_home_again() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let backend = apps_support::Backend::start(|_, _| (200, "{}".into()));
    let n = node(&redis, "n1", &backend.url());
    assert_eq!(geo_home(&redis), "n1");
    let mut seeker = open(n.addr, "/ws/location/seeker/", 900);
    let mut p = open(n.addr, "/ws/location/provider/", 101);
    go_active(&mut p, "SS0001", north(1.0));
    assert_eq!(search(&mut seeker, 5.0), [101]);

    // Another holder takes the lease (as a node that outlived a pause would find): n1 stops
    // being home and drops what it held.
    redis.redis_cli(&["SET", "beacon.geo.home", "someone-else", "PX", "60000"]);
    eventually(20, "n1 no longer subscribed to the geo channel", || {
        let subs = redis.redis_cli(&["PUBSUB", "NUMSUB", "beacon.geo"]);
        (subs.split_whitespace().nth(1) == Some("0")).then_some(())
    });
    redis.redis_cli(&["DEL", "beacon.geo.home"]);
    assert_eq!(geo_home(&redis), "n1");
    // Home again, with empty pools: nothing stale; the provider's next status places it.
    assert_eq!(search(&mut seeker, 5.0), Vec::<u64>::new());
    go_active(&mut p, "SS0001", north(1.0));
    assert_eq!(
        expect(&mut seeker, "new_provider_available")["provider_id"],
        101
    );
}
