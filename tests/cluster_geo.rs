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
    provider_ids(&expect(ws, "providers_nearby")["providers"])
}

fn dispatch(addr: SocketAddr, body: Value) -> (u16, Value) {
    post_api(addr, "/api/work/dispatch", body)
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
    // No provider was connected: the new home's pools are empty, searches work, and a
    // provider going active is found.
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

/// One search from a new seeker socket on `addr` (user `user`): the providers found, or `None`
/// when no answer came within a few seconds (no geo home yet).
fn search_once(addr: SocketAddr, user: u64, radius_km: f64) -> Option<Vec<(u64, f64)>> {
    let mut ws = open(addr, "/ws/location/seeker/", user);
    ws.get_mut()
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    send(
        &mut ws,
        json!({"type": "seeker_search_update", "searching": true, "latitude": CENTRE.0,
               "longitude": CENTRE.1, "category_code": "MS0001", "distance_radius": radius_km}),
    );
    loop {
        let m: Value = match ws.read() {
            Ok(tungstenite::Message::Text(t)) => serde_json::from_str(&t).unwrap(),
            Ok(_) => continue,
            Err(e) if timed_out(&e) => return None,
            Err(e) => panic!("seeker socket: {e}"),
        };
        // A provider placed between the answer's rendering and now is announced after it.
        if m["type"] == "providers_nearby" {
            let found = m["providers"].as_array().unwrap().iter();
            return Some(
                found
                    .map(|p| {
                        let id = p["provider_id"].as_u64().unwrap();
                        (id, p["distance_km"].as_f64().unwrap())
                    })
                    .collect(),
            );
        }
    }
}

fn ids(found: &[(u64, f64)]) -> Vec<u64> {
    found.iter().map(|f| f.0).collect()
}

/// Reads `ws` until a message of type `ty` arrives (others skipped), within `secs`.
fn until(ws: &mut Ws, ty: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no {ty} within {secs} s");
        let m = recv_within(ws, left.as_secs().max(1));
        if m["type"] == ty {
            return m;
        }
    }
}

#[test]
fn a_new_home_is_refilled_by_the_live_nodes_without_providers_sending_again() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let backend = apps_support::Backend::start(|_, _| (200, "{}".into()));
    let url = backend.url();
    let mut nodes: Vec<Option<BeaconProcess>> = (1..=3)
        .map(|i| Some(node(&redis, &format!("n{i}"), &url)))
        .collect();
    let home_name = geo_home(&redis);
    let home: usize = home_name[1..].parse::<usize>().unwrap() - 1;
    let (b, c) = ((home + 1) % 3, (home + 2) % 3);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.as_ref().unwrap().addr).collect();
    let addr = |i: usize| addrs[i];

    // Online providers on B and C (with their work sockets), one on the home (it dies with
    // it), one on C that went inactive and one on B whose socket closed: neither of those two
    // may come back.
    let mut watcher = open(addr(b), "/ws/location/seeker/", 900);
    assert_eq!(search(&mut watcher, 10.0), Vec::<u64>::new());
    let mut providers = Vec::new();
    for (user, km, at) in [
        (101, 1.0, b),
        (102, 2.0, c),
        (103, 0.5, home),
        (104, 3.0, c),
        (105, 4.0, b),
    ] {
        let mut l = open(addr(at), "/ws/location/provider/", user);
        go_active(&mut l, "SS0001", north(km));
        assert_eq!(
            expect(&mut watcher, "new_provider_available")["provider_id"],
            user
        );
        providers.push(l);
    }
    let mut work_b = open(addr(b), "/ws/work/provider/", 101);
    let mut work_c = open(addr(c), "/ws/work/provider/", 102);
    send(
        &mut providers[3],
        json!({"type": "provider_status_update", "active": false, "category_code": "MS0001",
               "subcategory_code": "SS0001"}),
    );
    assert_eq!(
        expect(&mut watcher, "provider_went_offline")["provider_id"],
        104
    );
    drop(providers.remove(4));
    assert_eq!(
        expect(&mut watcher, "provider_went_offline")["provider_id"],
        105
    );
    let found = eventually(30, "the home answers", || search_once(addr(c), 950, 10.0));
    assert_eq!(ids(&found), [103, 101, 102]);

    signal(nodes[home].as_ref().unwrap().child.id(), "KILL");
    nodes[home].take();
    let new_home = eventually(40, "another node holds the geo home", || {
        let h = geo_home(&redis);
        (h != home_name).then_some(h)
    });
    assert!(
        [b, c].map(|i| format!("n{}", i + 1)).contains(&new_home),
        "{new_home}"
    );

    // Nobody sends anything: the live nodes re-send what their connections last said, and a
    // new seeker finds B's and C's providers where they last were.
    let mut attempt = 950;
    let found = eventually(60, "the new home holds the live nodes' providers", || {
        attempt += 1;
        let found = search_once(addr(c), attempt, 10.0)?;
        if ids(&found).len() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(500));
            return None;
        }
        Some(found)
    });
    assert_eq!(ids(&found), [101, 102], "{found:?}");
    assert!(
        (found[0].1 - 1.0).abs() < 1e-6 && (found[1].1 - 2.0).abs() < 1e-6,
        "{found:?}"
    );

    // A dispatch offers them the work; the deactivated, closed and dead providers stay out.
    // (A 503 means the home's answer took over 2 s on a busy box: nothing was offered.)
    let mut job = 320;
    let r = eventually(30, "a dispatch answered", || {
        job += 1;
        let (status, r) = dispatch(addr(b), work(job, 5));
        assert!(status == 200 || status == 503, "{status} {r}");
        (status == 200).then_some(r)
    });
    assert_eq!(r["provider_ids"], json!([101, 102]));
    assert_eq!(expect(&mut work_b, "work_assignment")["distance"], "1.0km");
    assert_eq!(expect(&mut work_c, "work_assignment")["distance"], "2.0km");

    // The watcher's standing search was re-sent too (it is answered again, as a search is),
    // so it hears a provider on C leave its radius.
    until(&mut watcher, "providers_nearby", 30);
    send(
        &mut providers[1],
        json!({"type": "location_update", "latitude": north(30.0).0, "longitude": CENTRE.1}),
    );
    let left = until(&mut watcher, "provider_went_offline", 30);
    assert_eq!(left["provider_id"], 102, "{left}");
    drop(nodes);
    drop(redis);
}

#[test]
fn a_node_home_again_is_refilled_with_what_its_connections_last_said() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let backend = apps_support::Backend::start(|_, _| (200, "{}".into()));
    let n = node(&redis, "n1", &backend.url());
    assert_eq!(geo_home(&redis), "n1");
    let mut seeker = open(n.addr, "/ws/location/seeker/", 900);
    let mut providers: Vec<Ws> = [(101, 1.0), (102, 3.0), (103, 4.0)]
        .into_iter()
        .map(|(user, km)| {
            let mut p = open(n.addr, "/ws/location/provider/", user);
            go_active(&mut p, "SS0001", north(km));
            p
        })
        .collect();
    eventually(20, "the three providers placed", || {
        (ids(&search_once(n.addr, 950, 5.0)?) == [101, 102, 103]).then_some(())
    });
    assert_eq!(search(&mut seeker, 5.0), [101, 102, 103]);

    // Another holder takes the lease (as a node that outlived a pause would find): n1 stops
    // being home and drops what it held.
    redis.redis_cli(&["SET", "beacon.geo.home", "someone-else", "PX", "60000"]);
    eventually(20, "n1 no longer subscribed to the geo channel", || {
        let subs = redis.redis_cli(&["PUBSUB", "NUMSUB", "beacon.geo"]);
        (subs.split_whitespace().nth(1) == Some("0")).then_some(())
    });
    // Meanwhile (heard by no home): 101 moves, 102 goes inactive, 103's socket closes.
    send(
        &mut providers[0],
        json!({"type": "location_update", "latitude": north(2.0).0, "longitude": CENTRE.1}),
    );
    send(
        &mut providers[1],
        json!({"type": "provider_status_update", "active": false, "category_code": "MS0001",
               "subcategory_code": "SS0001"}),
    );
    drop(providers.remove(2));
    // Answered in order on each socket: the move and the status update were handled.
    for p in &mut providers {
        send(p, json!({"type": "no_such_message"}));
        assert_eq!(recv(p)["code"], "unknown_type");
    }
    redis.redis_cli(&["DEL", "beacon.geo.home"]);
    assert_eq!(geo_home(&redis), "n1");
    // Home again: its pools are rebuilt from what its connections last said, not from what
    // the old pools held: 101 where it moved, 102 and 103 gone.
    let mut attempt = 950;
    eventually(40, "101 placed again", || {
        attempt += 1;
        let found = search_once(n.addr, attempt, 5.0)?;
        if found.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(500));
            return None;
        }
        Some(())
    });
    // Every shard was asked in the same second; a re-send of 102 or 103 would be there by now.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let found = eventually(30, "the home answers", || search_once(n.addr, 999, 5.0));
    assert_eq!(ids(&found), [101], "{found:?}");
    assert!((found[0].1 - 2.0).abs() < 1e-6, "{found:?}");
    // The standing search came back too: a move is heard without searching again.
    until(&mut seeker, "providers_nearby", 30);
    send(
        &mut providers[0],
        json!({"type": "location_update", "latitude": north(30.0).0, "longitude": CENTRE.1}),
    );
    assert_eq!(
        until(&mut seeker, "provider_went_offline", 30)["provider_id"],
        101
    );
}

/// Geo messages sent while no node is home (the lease is held by a name no node has, as in the
/// seconds after a cluster starts) are not lost: once a node takes the lease, the provider's
/// status and the seeker's standing search reach it, and the seeker learns of the provider
/// without either sending again.
#[test]
fn a_search_made_before_any_node_is_home_is_answered_once_one_is() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let backend = apps_support::Backend::start(|_, _| (200, "{}".into()));
    redis.redis_cli(&["SET", "beacon.geo.home", "nobody", "PX", "60000"]);
    let n = node(&redis, "n1", &backend.url());
    let mut p = open(n.addr, "/ws/location/provider/", 101);
    go_active(&mut p, "SS0001", north(1.0));
    let mut seeker = open(n.addr, "/ws/location/seeker/", 900);
    send(
        &mut seeker,
        json!({"type": "seeker_search_update", "searching": true, "latitude": CENTRE.0,
               "longitude": CENTRE.1, "category_code": "MS0001", "distance_radius": 5.0}),
    );
    // Both went out to a geo channel nobody reads (counted); then the lease is free.
    eventually(20, "the messages published to no home", || {
        let m = http(n.addr, "GET", "/metrics", &[], b"").1;
        (metric_sum(
            &m,
            "beacon_broker_dropped_total",
            &["reason=\"no_receiver\""],
        ) >= 2.0)
            .then_some(())
    });
    assert_eq!(
        redis.redis_cli(&["GET", "beacon.geo.home"]).trim(),
        "nobody"
    );
    redis.redis_cli(&["DEL", "beacon.geo.home"]);
    assert_eq!(geo_home(&redis), "n1");
    // The two shards re-send in no set order: the answer names the provider, or the search
    // lands first (answered empty) and then hears it arrive.
    let found = until(&mut seeker, "providers_nearby", 30);
    let ids = provider_ids(&found["providers"]);
    if ids != [101] {
        assert_eq!(ids, Vec::<u64>::new(), "{found}");
        assert_eq!(
            until(&mut seeker, "new_provider_available", 30)["provider_id"],
            101
        );
    }
}
