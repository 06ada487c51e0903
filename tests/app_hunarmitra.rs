//! HunarMitra booking tracking (seed 001) on the real binary serving
//! config/protocols/hunarmitra.toml, with a real HTTP server answering the `booking_access`
//! hook: every flow and close code the app's doc describes.

mod apps_support;
mod common;

use apps_support::{dead_url, http_full, settle, skip_to, Backend, Binary};
use common::*;
use serde_json::{json, Value};

const PROTO: &str = "config/protocols/hunarmitra.toml";

/// Booking b-1: owner 10, assigned worker 11. Everyone else is refused by the backend.
fn backend() -> Backend {
    Backend::start(|_, req| {
        let booking = req["path"]["booking_id"].as_str().unwrap_or("");
        let user = req["user_id"].as_i64().unwrap_or(0);
        if booking == "b-1" && (user == 10 || user == 11) {
            (200, r#"{"allow": true}"#.into())
        } else {
            (200, r#"{"allow": false}"#.into())
        }
    })
}

fn owner() -> String {
    token(json!(10), json!({"role": "customer", "name": "Asha"}))
}
fn worker() -> String {
    token(json!(11), json!({"role": "worker", "name": "Worker Name"}))
}

#[test]
fn owner_and_worker_subscribe_through_the_hook_and_get_every_event() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    let mut owner_ws = connect(&b.url(&format!("/ws/bookings/b-1/?token={}", owner())));
    assert_eq!(
        recv(&mut owner_ws),
        json!({"type": "connection_established", "booking_id": "b-1", "message": "Connected to booking updates"})
    );
    // The hook got the documented request.
    let (path, req) = be.requests.lock().unwrap()[0].clone();
    assert_eq!(path, "/internal/beacon/authorize/");
    assert_eq!(req["endpoint"], "booking");
    assert_eq!(req["path"], json!({"booking_id": "b-1"}));
    assert_eq!(req["user_id"], json!(10));
    assert_eq!(req["claims"]["role"], "customer");

    // The worker via the subprotocol token source; only the marker is echoed.
    let mut worker_ws = connect_with(
        &b.url("/ws/bookings/b-1/"),
        &[("Sec-WebSocket-Protocol", &format!("jwt, {}", worker()))],
    )
    .unwrap();
    assert_eq!(recv(&mut worker_ws)["type"], "connection_established");

    send(&mut owner_ws, json!({"type": "ping"}));
    assert_eq!(recv(&mut owner_ws), json!({"type": "pong"}));

    let status = json!({
        "type": "booking_status", "booking_id": "b-1", "status": "on_the_way",
        "event_type": "booking_on_the_way", "actor": "Worker Name",
        "timestamp": "2026-01-03T11:00:00Z"
    });
    let (code, resp) = publish(b.addr, json!({"room": "booking:b-1", "message": status}));
    assert_eq!((code, resp["delivered"].as_u64()), (200, Some(2)));
    // The status entered the booking's history: the same position for both members.
    let (a, b2) = (recv(&mut owner_ws), recv(&mut worker_ws));
    assert_eq!((&a["offset"], &a["epoch"]), (&b2["offset"], &b2["epoch"]));
    assert_eq!(unpositioned(a), status);
    assert_eq!(unpositioned(b2), status);

    let loc = json!({
        "type": "location_update", "booking_id": "b-1", "lat": 28.6139, "lng": 77.209,
        "timestamp": "2026-01-03T11:05:00Z", "actor": "Worker Name"
    });
    publish(b.addr, json!({"room": "booking:b-1", "message": loc}));
    assert_eq!(recv(&mut owner_ws), loc);
}

#[test]
fn admin_and_staff_by_claim_others_4003_unauthenticated_4001() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    for extra in [
        json!({"is_staff": true}),
        json!({"role": "admin"}),
        json!({"role": "staff"}),
    ] {
        let t = token(json!(99), extra);
        let mut ws = connect(&b.url(&format!("/ws/bookings/b-1/?token={t}")));
        assert_eq!(recv(&mut ws)["type"], "connection_established");
    }
    assert_eq!(
        be.count(),
        0,
        "claims admit admin/staff without asking the backend"
    );

    let stranger = token(json!(12), json!({"role": "customer"}));
    let mut ws = connect(&b.url(&format!("/ws/bookings/b-1/?token={stranger}")));
    assert_eq!(expect_close(&mut ws).0, 4003);
    // The owner of b-1 is a stranger to b-2.
    let mut ws = connect(&b.url(&format!("/ws/bookings/b-2/?token={}", owner())));
    assert_eq!(expect_close(&mut ws).0, 4003);

    let mut ws = connect(&b.url("/ws/bookings/b-1/"));
    assert_eq!(expect_close(&mut ws), (4001, "Unauthenticated".into()));
    let mut ws = connect(&b.url("/ws/bookings/b-1/?token=not-a-jwt"));
    assert_eq!(expect_close(&mut ws).0, 4001);
    let expired = token_with(
        SECRET,
        jsonwebtoken::Algorithm::HS256,
        json!(10),
        json!({}),
        now() - 10,
    );
    let mut ws = connect(&b.url(&format!("/ws/bookings/b-1/?token={expired}")));
    assert_eq!(expect_close(&mut ws).0, 4001);
    let mut ws = connect(&b.url("/ws/notifications/"));
    assert_eq!(expect_close(&mut ws).0, 4001);
}

#[test]
fn hook_answers_are_cached_and_an_unreachable_backend_fails_closed() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    for _ in 0..2 {
        let mut ws = connect(&b.url(&format!("/ws/bookings/b-1/?token={}", owner())));
        assert_eq!(recv(&mut ws)["type"], "connection_established");
    }
    // Both connections may land on different shards (each caches its own answers); never
    // more than one call per shard.
    assert!(be.count() <= 2);

    let down = Binary::start(PROTO, &dead_url());
    let mut ws = connect(&down.url(&format!("/ws/bookings/b-1/?token={}", owner())));
    assert_eq!(
        expect_close(&mut ws),
        (1013, "Authorization unavailable".into())
    );

    let failing = Backend::start(|_, _| (500, "{}".into()));
    let b2 = Binary::start(PROTO, &failing.url());
    let mut ws = connect(&b2.url(&format!("/ws/bookings/b-1/?token={}", owner())));
    assert_eq!(expect_close(&mut ws).0, 1013);
}

#[test]
fn notifications_reach_only_the_users_own_socket() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    let mut mine = connect(&b.url(&format!("/ws/notifications/?token={}", owner())));
    let mut theirs = connect(&b.url(&format!("/ws/notifications/?token={}", worker())));
    let note = |m: &str| json!({"type": "notification", "title": m, "message": m});
    skip_to(&mut mine, &settle(b.addr, "user:10", note, 1));
    skip_to(&mut theirs, &settle(b.addr, "user:11", note, 1));
    let n = json!({"type": "notification", "title": "Booking confirmed", "message": "Your plumber is on the way"});
    let (code, _) = publish(b.addr, json!({"room": "user:10", "message": n}));
    assert_eq!(code, 200);
    let got = recv(&mut mine);
    assert_eq!(unpositioned(got.clone()), n);
    assert_eq!(
        (got["title"].as_str(), got["message"].as_str()),
        (
            Some("Booking confirmed"),
            Some("Your plumber is on the way")
        )
    );
    assert_silent(&mut theirs, 300);
}

#[test]
fn tracking_endpoint_broadcasts_answers_the_documented_json_and_is_rate_limited() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    let mut watcher = connect(&b.url(&format!("/ws/bookings/b-1/?token={}", owner())));
    recv(&mut watcher);

    let bearer = format!("Bearer {}", worker());
    let body = json!({"lat": 28.6139, "lng": 77.209, "timestamp": "2026-01-03T11:05:00Z"});
    let (status, _, text) = http_full(
        b.addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({
            "status": "success", "message": "Location updated", "booking_id": "b-1",
            "location": {"lat": 28.6139, "lng": 77.209, "timestamp": "2026-01-03T11:05:00Z"}
        })
    );
    assert_eq!(
        recv(&mut watcher),
        json!({"type": "location_update", "booking_id": "b-1", "lat": 28.6139, "lng": 77.209,
               "timestamp": "2026-01-03T11:05:00Z", "actor": "Worker Name"})
    );

    // 1 request per 2 seconds per caller: the next one at once is refused.
    let (status, head, text) = http_full(
        b.addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        br#"{"lat": 1.0, "lng": 2.0}"#,
    );
    assert_eq!(status, 429, "{text}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "rate limit exceeded");

    // An admin is a different caller; no timestamp means the server's time.
    let admin = format!("Bearer {}", token(json!(1), json!({"role": "admin"})));
    let (status, _, text) = http_full(
        b.addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[("Authorization", &admin)],
        br#"{"lat": 28.7, "lng": 77.3}"#,
    );
    assert_eq!(status, 200, "{text}");
    let got = recv(&mut watcher);
    assert_eq!(
        (got["lat"].as_f64(), got["lng"].as_f64()),
        (Some(28.7), Some(77.3))
    );
    assert!(got["timestamp"].as_str().unwrap().ends_with('Z'));

    // Customers cannot post locations; a worker not assigned is refused by the hook.
    let customer = format!("Bearer {}", owner());
    let st = http_full(
        b.addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[("Authorization", &customer)],
        br#"{"lat":1,"lng":2}"#,
    )
    .0;
    assert_eq!(st, 403);
    let other_worker = format!("Bearer {}", token(json!(13), json!({"role": "worker"})));
    let st = http_full(
        b.addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[("Authorization", &other_worker)],
        br#"{"lat":1,"lng":2}"#,
    )
    .0;
    assert_eq!(st, 403);
    let st = http_full(
        b.addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[],
        br#"{"lat":1,"lng":2}"#,
    )
    .0;
    assert_eq!(st, 401);
    let st = http_full(
        b.addr,
        "GET",
        "/api/v1/tracking/b-1/",
        &[("Authorization", &admin)],
        b"",
    )
    .0;
    assert_eq!(st, 405);
    let fresh_admin = format!("Bearer {}", token(json!(2), json!({"role": "admin"})));
    let (st, _, text) = http_full(
        b.addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[("Authorization", &fresh_admin)],
        br#"{"lat": 91, "lng": 2}"#,
    );
    assert_eq!(st, 400, "{text}");
}

/// A backend that holds every hook request until the test opens the gate.
fn gated() -> (
    Backend,
    std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
) {
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let g = gate.clone();
    let be = Backend::start(move |_, _| {
        let (open, cv) = &*g;
        let mut o = open.lock().unwrap();
        while !*o {
            o = cv.wait(o).unwrap();
        }
        (200, r#"{"allow": true}"#.into())
    });
    (be, gate)
}

#[test]
fn a_pending_hook_never_stalls_the_shard_and_times_out_closed() {
    let (be, gate) = gated();
    // One shard: the socket waiting on the hook and the others share it.
    let b = Binary::start_with(PROTO, &be.url(), 1);
    let url = b.url(&format!("/ws/bookings/b-1/?token={}", owner()));
    let waiting = std::thread::spawn(move || {
        let mut ws = connect(&url);
        expect_close(&mut ws)
    });
    while be.count() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The hook is pending; the shard still admits, answers and publishes.
    let admin = token(json!(1), json!({"role": "admin"}));
    let mut ws = connect(&b.url(&format!("/ws/bookings/b-1/?token={admin}")));
    assert_eq!(recv(&mut ws)["type"], "connection_established");
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(recv(&mut ws), json!({"type": "pong"}));
    assert_eq!(http(b.addr, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(be.count(), 1, "the hook is still unanswered");
    // The backend never answered within timeout_ms: refused, fail closed.
    assert_eq!(
        waiting.join().unwrap(),
        (1013, "Authorization unavailable".into())
    );
    let (open, cv) = &*gate;
    *open.lock().unwrap() = true;
    cv.notify_all();
}
