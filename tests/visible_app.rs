//! The VISIBLE app's documented flows over real sockets against config/protocols/visible.toml
//! on two shards: providers going active and moving, seekers' standing searches, work
//! dispatch and responses, schema errors, and both ways to authenticate.

mod apps_support;
mod common;

use std::collections::HashSet;

use beacon::runtime::owner_of;
use common::*;
use serde_json::{json, Value};

const CENTRE: (f64, f64) = (11.2588, 75.8577);
/// Degrees of latitude per km on Beacon's sphere (R = 6371.0088 km).
const DEG_PER_KM: f64 = 180.0 / (std::f64::consts::PI * beacon::geo::EARTH_RADIUS_KM);

fn protocol() -> String {
    std::fs::read_to_string(root().join("config/protocols/visible.toml")).unwrap()
}

fn with_interval(ms: u64) -> String {
    protocol().replace(
        "moved_min_interval_ms = 1000",
        &format!("moved_min_interval_ms = {ms}"),
    )
}

fn bearer(user: u64) -> String {
    format!("Bearer {}", token(json!(user), json!({})))
}

fn open(e: &Engine, path: &str, user: u64) -> Ws {
    connect_with(&e.url(path), &[("Authorization", &bearer(user))]).expect("upgrade accepted")
}

/// Proves the socket has joined its home room on its owner shard: an unknown message type is
/// answered by that shard with an error.
fn ready(ws: &mut Ws) {
    send(ws, json!({"type": "no_such_message"}));
    let e = recv(ws);
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "unknown_type");
}

/// A point `km` north of the centre.
fn north(km: f64) -> (f64, f64) {
    (CENTRE.0 + km * DEG_PER_KM, CENTRE.1)
}

fn go_active(ws: &mut Ws, cat: &str, sub: &str, at: (f64, f64)) {
    send(
        ws,
        json!({"type": "provider_status_update", "active": true, "category_code": cat,
               "subcategory_code": sub, "latitude": at.0, "longitude": at.1}),
    );
}

fn move_to(ws: &mut Ws, at: (f64, f64)) {
    send(
        ws,
        json!({"type": "location_update", "latitude": at.0, "longitude": at.1}),
    );
}

fn search(ws: &mut Ws, cat: &str, sub: Option<&str>, radius_km: f64) -> Value {
    let mut m = json!({"type": "seeker_search_update", "searching": true,
        "latitude": CENTRE.0, "longitude": CENTRE.1, "category_code": cat,
        "distance_radius": radius_km});
    if let Some(s) = sub {
        m["subcategory_code"] = json!(s);
    }
    send(ws, m);
    let r = recv(ws);
    assert_eq!(r["type"], "providers_nearby", "{r}");
    r
}

#[test]
fn rooms_of_this_test_span_both_shards() {
    // The flows below only prove cross-shard behaviour if their rooms do not all share a shard.
    let rooms = [
        "location:provider:101",
        "location:provider:102",
        "location:seeker:201",
        "location:seeker:202",
        "geo:nearby:MS0001",
        "work:provider:101",
        "work:seeker:201",
    ];
    let owners: HashSet<usize> = rooms.iter().map(|r| owner_of(r, 2)).collect();
    assert_eq!(owners.len(), 2);
}

#[test]
fn search_answers_nearest_first_and_follows_providers() {
    let e = Engine::start(&protocol());
    let mut watcher = open(&e, "/ws/location/seeker/", 201);
    assert_eq!(
        search(&mut watcher, "MS0001", None, 5.0)["providers"],
        json!([])
    );

    let mut p = Vec::new();
    for (user, km, sub) in [
        (101, 3.0, "SS0001"),
        (102, 1.0, "SS0002"),
        (103, 2.0, "SS0001"),
    ] {
        let mut ws = open(&e, "/ws/location/provider/", user);
        go_active(&mut ws, "MS0001", sub, north(km));
        let n = expect(&mut watcher, "new_provider_available");
        assert_eq!(n["provider_id"], user);
        assert!(
            (n["distance_km"].as_f64().unwrap() - km).abs() < 1e-6,
            "{n}"
        );
        assert_eq!(n["category_code"], "MS0001");
        assert_eq!(n["subcategory_code"], sub);
        p.push(ws);
    }
    // Another category and one out of range never reach this search.
    let mut other = open(&e, "/ws/location/provider/", 104);
    go_active(&mut other, "MS0002", "SS0001", north(0.5));
    let mut far = open(&e, "/ws/location/provider/", 105);
    go_active(&mut far, "MS0001", "SS0001", north(9.0));
    assert_silent(&mut watcher, 300);

    let mut seeker = open(&e, "/ws/location/seeker/", 202);
    let r = search(&mut seeker, "MS0001", None, 5.0);
    assert_eq!(provider_ids(&r["providers"]), vec![102, 103, 101]);
    let first = &r["providers"][0];
    assert!((first["distance_km"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(first["latitude"].as_f64().unwrap(), north(1.0).0);
    assert_eq!(first["longitude"].as_f64().unwrap(), CENTRE.1);
    assert_eq!(first["category_code"], "MS0001");
    assert_eq!(first["subcategory_code"], "SS0002");
    // Subcategory filter.
    let r = search(&mut seeker, "MS0001", Some("SS0001"), 5.0);
    assert_eq!(provider_ids(&r["providers"]), vec![103, 101]);
    // A wider radius takes in the far one.
    let r = search(&mut seeker, "MS0001", None, 10.0);
    assert_eq!(provider_ids(&r["providers"]), vec![102, 103, 101, 105]);
    search(&mut seeker, "MS0001", None, 5.0);

    // Moving in and out of 5 km: both seekers see it.
    move_to(&mut far, north(4.0));
    for s in [&mut watcher, &mut seeker] {
        let n = expect(s, "new_provider_available");
        assert_eq!(n["provider_id"], 105);
        assert!((n["distance_km"].as_f64().unwrap() - 4.0).abs() < 1e-6);
    }
    move_to(&mut far, north(6.0));
    for s in [&mut watcher, &mut seeker] {
        assert_eq!(expect(s, "provider_went_offline")["provider_id"], 105);
    }

    // Going inactive and disconnecting both mean offline.
    send(
        &mut p[0],
        json!({"type": "provider_status_update", "active": false, "category_code": "MS0001"}),
    );
    for s in [&mut watcher, &mut seeker] {
        assert_eq!(expect(s, "provider_went_offline")["provider_id"], 101);
    }
    let mut gone = p.remove(0);
    drop(gone.close(None));
    drop(p.remove(0)); // 102: dropped without a close frame
    for s in [&mut watcher, &mut seeker] {
        assert_eq!(expect(s, "provider_went_offline")["provider_id"], 102);
    }

    // searching: false ends the watcher's search.
    send(
        &mut watcher,
        json!({"type": "seeker_search_update", "searching": false, "category_code": "MS0001"}),
    );
    ready(&mut watcher);
    let mut again = open(&e, "/ws/location/provider/", 106);
    go_active(&mut again, "MS0001", "SS0001", north(0.1));
    // The other seeker still sees it, the watcher does not.
    assert_eq!(
        expect(&mut seeker, "new_provider_available")["provider_id"],
        106
    );
    assert_silent(&mut watcher, 300);

    // A seeker that disconnects leaves no search behind.
    drop(seeker);
    let mut last = open(&e, "/ws/location/seeker/", 203);
    let r = search(&mut last, "MS0001", None, 10.0);
    assert_eq!(provider_ids(&r["providers"]), vec![106, 103, 105]);
    e.stop();
}

#[test]
fn location_updates_are_rate_limited_per_seeker() {
    // An interval no test run reaches: after entering, moves inside stay silent.
    let e = Engine::start(&with_interval(3_600_000));
    let mut seeker = open(&e, "/ws/location/seeker/", 201);
    search(&mut seeker, "MS0001", None, 5.0);
    let mut p = open(&e, "/ws/location/provider/", 101);
    go_active(&mut p, "MS0001", "SS0001", north(1.0));
    expect(&mut seeker, "new_provider_available");
    for km in [1.5, 2.0, 2.5] {
        move_to(&mut p, north(km));
    }
    move_to(&mut p, north(8.0));
    // The next message is the departure: no location update got through.
    assert_eq!(
        expect(&mut seeker, "provider_went_offline")["provider_id"],
        101
    );
    // The pool's owner shard counted it all: going active, three moves held back, leaving.
    assert_eq!(e.metric("beacon_geo_updates_total", &[]), 5.0);
    assert_eq!(e.metric("beacon_geo_moved_held_back_total", &[]), 3.0);
    let notes = |kind: &str| e.metric("beacon_geo_notifications_total", &[kind]);
    assert_eq!(notes("entered"), 1.0);
    assert_eq!(notes("moved"), 0.0);
    assert_eq!(notes("left"), 1.0);
    assert_eq!(e.metric("beacon_geo_providers", &[]), 1.0);
    assert_eq!(e.metric("beacon_geo_searches", &[]), 1.0);
    e.stop();

    // Interval zero: every move in range is reported, with its distance.
    let e = Engine::start(&with_interval(0));
    let mut seeker = open(&e, "/ws/location/seeker/", 201);
    search(&mut seeker, "MS0001", None, 5.0);
    let mut p = open(&e, "/ws/location/provider/", 101);
    go_active(&mut p, "MS0001", "SS0001", north(1.0));
    expect(&mut seeker, "new_provider_available");
    for km in [1.5, 2.0, 2.5] {
        move_to(&mut p, north(km));
        let u = expect(&mut seeker, "provider_location_update");
        assert_eq!(u["provider_id"], 101);
        assert!((u["distance_km"].as_f64().unwrap() - km).abs() < 1e-6);
        assert_eq!(u["latitude"].as_f64().unwrap(), north(km).0);
    }
    e.stop();
}

fn dispatch(e: &Engine, body: Value) -> (u16, Value) {
    post_api(e.addr, "/api/work/dispatch", body)
}

fn work(id: u64, max: u64) -> Value {
    json!({
        "work_id": id, "service_type": "worker", "message": "Need help with painting",
        "latitude": CENTRE.0, "longitude": CENTRE.1, "category_code": "MS0001",
        "subcategory_code": "SS0001", "distance_radius": 5, "max_providers": max,
        "seeker": {"user_id": 456, "name": "John Doe", "mobile_number": "9876543210",
                   "profile_photo": "https://api.visibleapp.in/media/profiles/456/photo.jpg"}
    })
}

/// The app backend recording work responses (`record_work_response`), as
/// examples/django does: work 123 was offered to providers 101 and 102 only.
fn work_backend() -> apps_support::Backend {
    apps_support::Backend::start(|path, req| {
        assert_eq!(path, "/internal/beacon/visible/work-response/");
        let user = req["user_id"].as_i64().unwrap_or(0);
        if req["message"]["work_id"] == 123 && ![101, 102].contains(&user) {
            return (
                403,
                r#"{"error": "not_offered", "message": "this work was not offered to you"}"#.into(),
            );
        }
        (200, "{}".into())
    })
}

#[test]
fn work_dispatch_reaches_the_nearest_and_answers_reach_the_seeker() {
    let backend = work_backend();
    let e = Engine::start_with(&protocol(), 2, |c| c.backend_url = backend.url());
    let mut watcher = open(&e, "/ws/location/seeker/", 900);
    search(&mut watcher, "MS0001", None, 50.0);
    let mut loc = Vec::new();
    let mut work_ws = Vec::new();
    for (user, km, sub) in [
        (101, 2.5, "SS0001"),
        (102, 1.0, "SS0001"),
        (103, 4.0, "SS0001"),
        (104, 0.5, "SS0002"),
        (105, 20.0, "SS0001"),
    ] {
        let mut l = open(&e, "/ws/location/provider/", user);
        go_active(&mut l, "MS0001", sub, north(km));
        expect(&mut watcher, "new_provider_available");
        loc.push(l);
        let mut w = open(&e, "/ws/work/provider/", user);
        ready(&mut w);
        work_ws.push(w);
    }
    let mut seeker = open(&e, "/ws/work/seeker/", 456);
    ready(&mut seeker);

    let (status, r) = dispatch(&e, work(123, 2));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["provider_ids"], json!([102, 101]));

    let a = expect(&mut work_ws[1], "work_assignment");
    assert_eq!(a["work_id"], 123);
    assert_eq!(a["distance"], "1.0km");
    assert_eq!(a["service_type"], "worker");
    assert_eq!(a["message"], "Need help with painting");
    assert_eq!(a["seeker_latitude"].as_f64().unwrap(), CENTRE.0);
    assert_eq!(a["seeker_longitude"].as_f64().unwrap(), CENTRE.1);
    assert_eq!(a["seeker"]["user_id"], 456);
    assert_eq!(a["seeker"]["name"], "John Doe");
    assert!(a["created_at"].as_str().unwrap().ends_with('Z'));
    let b = expect(&mut work_ws[0], "work_assignment");
    assert_eq!(b["distance"], "2.5km");
    for w in [2, 3, 4] {
        assert_silent(&mut work_ws[w], 200);
    }

    // A rejection reaches the seeker; the acceptance too, and the others are told it is taken.
    send(
        &mut work_ws[0],
        json!({"type": "work_response", "work_id": 123, "response": "rejected", "message": "Busy"}),
    );
    let rej = expect(&mut seeker, "work_response");
    assert_eq!(rej["provider_id"], 101);
    assert_eq!(rej["response"], "rejected");
    assert_eq!(rej["message"], "Busy");
    send(
        &mut work_ws[1],
        json!({"type": "work_response", "work_id": 123, "response": "accepted",
               "message": "I'll be there in 30 minutes"}),
    );
    let acc = expect(&mut seeker, "work_response");
    assert_eq!(acc["provider_id"], 102);
    assert_eq!(acc["response"], "accepted");
    assert_eq!(acc["message"], "I'll be there in 30 minutes");
    assert_eq!(acc["work_id"], 123);
    assert_eq!(expect(&mut work_ws[0], "work_taken")["work_id"], 123);
    assert_silent(&mut work_ws[1], 200);

    // A late acceptance is told the work is taken and does not reach the seeker; a provider
    // that was never offered the work cannot answer it.
    send(
        &mut work_ws[0],
        json!({"type": "work_response", "work_id": 123, "response": "accepted"}),
    );
    assert_eq!(expect(&mut work_ws[0], "work_taken")["work_id"], 123);
    send(
        &mut work_ws[2],
        json!({"type": "work_response", "work_id": 123, "response": "accepted"}),
    );
    let refused = expect(&mut work_ws[2], "error");
    assert_eq!(refused["code"], "not_offered");
    assert_silent(&mut seeker, 300);
    // Every answer reached the backend before the seeker heard it, in order.
    let seen: Vec<(String, String)> = backend
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| {
            (
                r["user_id"]
                    .as_i64()
                    .expect("a numeric id as a number")
                    .to_string(),
                r["message"]["response"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("101".into(), "rejected".into()),
            ("102".into(), "accepted".into()),
            ("101".into(), "accepted".into()),
            ("103".into(), "accepted".into())
        ]
    );

    // Subcategory filter, and nobody in range.
    let mut body = work(124, 5);
    body["subcategory_code"] = json!("SS0002");
    assert_eq!(dispatch(&e, body).1["provider_ids"], json!([104]));
    assert_eq!(
        expect(&mut work_ws[3], "work_assignment")["distance"],
        "0.5km"
    );
    let mut body = work(125, 5);
    body["category_code"] = json!("MS0404");
    assert_eq!(dispatch(&e, body).1["provider_ids"], json!([]));

    // Bad requests.
    let mut body = work(126, 1);
    body["latitude"] = json!(91.5);
    assert_eq!(dispatch(&e, body).0, 400);
    let mut body = work(126, 1);
    body.as_object_mut().unwrap().remove("longitude");
    assert_eq!(dispatch(&e, body).0, 400);
    let (status, _) = http(
        e.addr,
        "POST",
        "/api/work/dispatch",
        &[("Content-Type", "application/json")],
        work(127, 1).to_string().as_bytes(),
    );
    assert_eq!(status, 401);
    let (status, _) = http(e.addr, "GET", "/api/work/dispatch", &[], b"");
    assert_eq!(status, 405);
    e.stop();
}

#[test]
fn bad_coordinates_are_schema_errors() {
    let e = Engine::start(&protocol());
    let mut p = open(&e, "/ws/location/provider/", 101);
    let cases = [
        r#"{"type":"location_update","latitude":NaN,"longitude":1.0}"#.to_owned(),
        json!({"type": "location_update", "latitude": 90.5, "longitude": 1.0}).to_string(),
        json!({"type": "location_update", "latitude": 10.0, "longitude": -180.5}).to_string(),
        json!({"type": "location_update", "latitude": "10", "longitude": 1.0}).to_string(),
        json!({"type": "location_update", "longitude": 1.0}).to_string(),
        json!({"type": "provider_status_update", "active": true, "category_code": "MS0001",
               "latitude": 10.0})
        .to_string(),
    ];
    for c in &cases {
        p.send(tungstenite::Message::text(c.clone())).unwrap();
        let err = expect(&mut p, "error");
        let code = err["code"].as_str().unwrap();
        assert!(
            code == "invalid_message" || code == "invalid_json",
            "{c}: {err}"
        );
    }
    let mut s = open(&e, "/ws/location/seeker/", 201);
    for radius in [json!(0), json!(-3), json!(20001), json!(null)] {
        send(
            &mut s,
            json!({"type": "seeker_search_update", "searching": true, "latitude": 1.0,
                   "longitude": 2.0, "category_code": "MS0001", "distance_radius": radius}),
        );
        assert_eq!(expect(&mut s, "error")["code"], "invalid_message");
    }
    e.stop();
}

#[test]
fn bearer_and_first_message_authentication() {
    let e = Engine::start(&protocol());
    // First-message auth on every endpoint.
    let mut seeker = connect(&e.url("/ws/location/seeker/"));
    send(
        &mut seeker,
        json!({"type": "authenticate", "token": token(json!(201), json!({}))}),
    );
    assert_eq!(
        search(&mut seeker, "MS0001", None, 5.0)["providers"],
        json!([])
    );
    let mut p = connect(&e.url("/ws/location/provider/"));
    send(
        &mut p,
        json!({"type": "authenticate", "token": token(json!(101), json!({}))}),
    );
    go_active(&mut p, "MS0001", "SS0001", north(1.0));
    assert_eq!(
        expect(&mut seeker, "new_provider_available")["provider_id"],
        101
    );

    // Bad tokens close with the app's codes.
    let mut bad = connect_with(
        &e.url("/ws/work/provider/"),
        &[("Authorization", "Bearer not-a-jwt")],
    )
    .unwrap();
    assert_eq!(expect_close(&mut bad).0, 4001);
    let mut none = connect(&e.url("/ws/work/seeker/"));
    send(&mut none, json!({"type": "work_response"}));
    assert_eq!(expect_close(&mut none).0, 4005);
    e.stop();
}

#[test]
fn the_documented_status_update_is_placed_by_the_next_move() {
    let e = Engine::start(&protocol());
    let mut watcher = open(&e, "/ws/location/seeker/", 900);
    search(&mut watcher, "MS0001", None, 50.0);
    let mut p = open(&e, "/ws/location/provider/", 101);
    // Exactly as seed 000 documents it: no coordinates.
    send(
        &mut p,
        json!({"type": "provider_status_update", "active": true,
               "category_code": "MS0001", "subcategory_code": "SS0001"}),
    );
    ready(&mut p);
    assert_silent(&mut watcher, 200);
    move_to(&mut p, north(2.0));
    let seen = expect(&mut watcher, "new_provider_available");
    assert_eq!(seen["provider_id"], 101);
    // And a search now finds it.
    let mut late = open(&e, "/ws/location/seeker/", 901);
    let found = search(&mut late, "MS0001", Some("SS0001"), 50.0);
    assert_eq!(provider_ids(&found["providers"]), [101]);
    e.stop();
}
