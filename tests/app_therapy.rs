//! Therapy sessions (seed 003) on the real binary serving config/protocols/therapy.toml:
//! chat and therapist location, every close code the app's doc describes. A stand-in backend
//! answers the `party` hook (with the caller's role as a fact, for tokens without one) and
//! stores chat messages (`store_message`); tests/django_backend.rs runs the real example
//! backend.

mod apps_support;
mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use apps_support::{dead_url, settle, skip_to, Backend, Binary};
use common::*;
use serde_json::json;

/// Customer 123 and therapist 456 are a pair. Answers who the caller is in the pair, and
/// stores chat messages as examples/django does: ids from a sequence, the sender from
/// Beacon's request.
fn store() -> Backend {
    let next = AtomicU64::new(1);
    Backend::start(move |path, req| {
        if path == "/internal/beacon/therapy/authorize/" {
            let pair = req["path"] == json!({"customer_id": "123", "therapist_id": "456"});
            let answer = match req["user_id"].as_i64() {
                Some(123) if pair => json!({"allow": true, "facts": {"role": "customer"}}),
                Some(456) if pair => json!({"allow": true, "facts": {"role": "therapist"}}),
                _ => json!({"allow": false}),
            };
            return (200, answer.to_string());
        }
        assert_eq!(path, "/internal/beacon/therapy/message/");
        let id = next.fetch_add(1, Ordering::SeqCst);
        let answer = json!({"broadcast": {
            "message": req["message"]["message"], "sender_id": req["user_id"].to_string(),
            "message_id": id.to_string(), "timestamp": "2024-01-15T10:30:00.123456Z"}});
        (200, answer.to_string())
    })
}

const PROTO: &str = "config/protocols/therapy.toml";

fn customer(id: i64) -> String {
    token(json!(id), json!({"role": "customer"}))
}
fn therapist(id: i64) -> String {
    token(json!(id), json!({"role": "therapist"}))
}

#[test]
fn close_codes_4000_4001_4003() {
    let be = store();
    let b = Binary::start(PROTO, &be.url());
    let c = customer(123);
    for path in [
        format!("/ws/chat/123//?token={c}"),
        format!("/ws/chat/123/?token={c}"),
        format!("/ws/chat/?token={c}"),
        format!("/ws/location//456/?token={c}"),
    ] {
        let mut ws = connect(&b.url(&path));
        assert_eq!(
            expect_close(&mut ws),
            (4000, "Missing required parameters".into()),
            "{path}"
        );
    }
    let mut ws = connect(&b.url("/ws/chat/123/456/"));
    assert_eq!(
        expect_close(&mut ws),
        (4001, "User not authenticated".into())
    );
    let mut ws = connect(&b.url("/ws/chat/123/456/?token=nope"));
    assert_eq!(expect_close(&mut ws).0, 4001);
    // A customer on another customer's id, a therapist on another therapist's id, a token
    // without a role for someone outside the pair (the backend says no to each).
    for (t, path) in [
        (customer(124), "/ws/chat/123/456/"),
        (therapist(457), "/ws/chat/123/456/"),
        (token(json!(999), json!({})), "/ws/location/123/456/"),
    ] {
        let mut ws = connect(&b.url(&format!("{path}?token={t}")));
        assert_eq!(expect_close(&mut ws), (4003, "Unauthorized".into()));
    }
    // Bearer header works too.
    let mut ws = connect_with(
        &b.url("/ws/chat/123/456/"),
        &[("Authorization", &format!("Bearer {}", customer(123)))],
    )
    .unwrap();
    send(&mut ws, json!({"message": "hi"}));
    assert_eq!(recv(&mut ws)["type"], "message");
}

#[test]
fn chat_messages_without_type_and_empty_ones_ignored() {
    let be = store();
    let b = Binary::start(PROTO, &be.url());
    let mut cust = connect(&b.url(&format!("/ws/chat/123/456/?token={}", customer(123))));
    let mut ther = connect(&b.url(&format!("/ws/chat/123/456/?token={}", therapist(456))));
    let marker = settle(
        b.addr,
        "chat:123:456",
        |m| {
            json!({"type": "message", "message": m,
        "sender_id": "0", "message_id": "0", "timestamp": "t"})
        },
        2,
    );
    skip_to(&mut cust, &marker);
    skip_to(&mut ther, &marker);
    send(&mut cust, json!({"message": "Hello, how are you today?"}));
    for ws in [&mut cust, &mut ther] {
        let m = recv(ws);
        assert_eq!(m["type"], "message");
        assert_eq!(m["message"], "Hello, how are you today?");
        assert_eq!(m["sender_id"], "123");
        assert_eq!(m["message_id"], "1");
        let ts = m["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2024-01-15T10:30:00.123456Z".len(), "{ts}");
        // The documented five, and the position in the conversation's history.
        assert_eq!(unpositioned(m).as_object().unwrap().len(), 5);
    }
    send(&mut ther, json!({"message": ""}));
    send(&mut ther, json!({"message": "   "}));
    send(&mut ther, json!({}));
    assert_silent(&mut cust, 300);
    send(&mut ther, json!({"message": "I'm well"}));
    let m = recv(&mut cust);
    assert_eq!(
        (&m["sender_id"], &m["message_id"]),
        (&json!("456"), &json!("2"))
    );
    // Empty messages never reached the backend.
    assert_eq!(be.count(), 2);
}

#[test]
fn chat_closes_with_the_declared_code_when_the_store_is_down() {
    let b = Binary::start(PROTO, &dead_url());
    let mut cust = connect(&b.url(&format!("/ws/chat/123/456/?token={}", customer(123))));
    send(&mut cust, json!({"message": "anyone there?"}));
    assert_eq!(
        expect_close(&mut cust),
        (1013, "Backend unavailable".into())
    );
    let m = b.metrics();
    assert_eq!(
        metric_sum(&m, "beacon_forwards_total", &["result=\"unavailable\""]),
        1.0,
        "{m}"
    );
    // One retry was declared, and taken.
    assert_eq!(metric_sum(&m, "beacon_forward_retries_total", &[]), 1.0);
}

#[test]
fn only_therapists_share_location() {
    let b = Binary::start(PROTO, &dead_url());
    let mut cust = connect(&b.url(&format!("/ws/location/123/456/?token={}", customer(123))));
    let mut ther = connect(&b.url(&format!("/ws/location/123/456/?token={}", therapist(456))));
    let marker = settle(
        b.addr,
        "location:123:456",
        |m| {
            json!({"type": "location", "latitude": 0.0,
        "longitude": 0.0, "therapist_id": m})
        },
        2,
    );
    skip_to(&mut cust, &marker);
    skip_to(&mut ther, &marker);
    send(&mut cust, json!({"latitude": 1.0, "longitude": 2.0}));
    assert_silent(&mut ther, 300);
    send(
        &mut ther,
        json!({"latitude": 40.7128, "longitude": -74.006}),
    );
    let want = json!({"type": "location", "latitude": 40.7128, "longitude": -74.006, "therapist_id": "456"});
    assert_eq!(unpositioned(recv(&mut cust)), want);
    assert_eq!(unpositioned(recv(&mut ther)), want);
    // The backend can publish to the same rooms.
    let (code, _) = publish(
        b.addr,
        json!({"room": "chat:123:456", "message": {"type": "message", "message": "Session moved to 5pm",
               "sender_id": "1", "message_id": "9", "timestamp": "2024-01-15T10:30:00.123456Z"}}),
    );
    assert_eq!(code, 200);
}

#[test]
fn stock_tokens_get_their_role_from_the_backend() {
    let be = store();
    let b = Binary::start(PROTO, &be.url());
    // No role claim: the backend says 123 is the customer and 456 the therapist.
    let (c, t) = (token(json!(123), json!({})), token(json!(456), json!({})));
    let mut cust = connect(&b.url(&format!("/ws/location/123/456/?token={c}")));
    let mut ther = connect(&b.url(&format!("/ws/location/123/456/?token={t}")));
    // A token that calls 123 a therapist: the backend's answer wins, 123 is the customer.
    let mut posing = connect(&b.url(&format!("/ws/location/123/456/?token={}", therapist(123))));
    let marker = settle(
        b.addr,
        "location:123:456",
        |m| json!({"type": "location", "latitude": 0.0, "longitude": 0.0, "therapist_id": m}),
        3,
    );
    for ws in [&mut cust, &mut ther, &mut posing] {
        skip_to(ws, &marker);
    }
    // Only the therapist's location goes out (only_if reads the role fact).
    send(&mut posing, json!({"latitude": 1.0, "longitude": 2.0}));
    send(&mut cust, json!({"latitude": 1.0, "longitude": 2.0}));
    send(&mut ther, json!({"latitude": 3.0, "longitude": 4.0}));
    let want =
        json!({"type": "location", "latitude": 3.0, "longitude": 4.0, "therapist_id": "456"});
    assert_eq!(unpositioned(recv(&mut cust)), want);
    assert_eq!(unpositioned(recv(&mut posing)), want);
}
