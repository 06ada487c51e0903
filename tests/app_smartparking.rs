//! Smart Parking notifications (seed 004) on the real binary serving
//! config/protocols/smartparking.toml: the ws-token exchange, the socket that accepts only
//! that token, and subscription filters.

mod apps_support;
mod common;

use apps_support::{dead_url, http_full, Binary};
use common::*;
use serde_json::{json, Value};

const PROTO: &str = "config/protocols/smartparking.toml";

fn ws_token(b: &Binary, user: i64) -> String {
    let bearer = format!("Bearer {}", token(json!(user), json!({})));
    let (status, _, body) = http_full(
        b.addr,
        "GET",
        "/api/user/ws-token/",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    v["ws_token"].as_str().unwrap().to_owned()
}

#[test]
fn ws_token_exchange_and_only_that_token_opens_the_socket() {
    let b = Binary::start(PROTO, &dead_url());
    let t = ws_token(&b, 7);
    // A 30-minute token of its own type.
    let payload = t.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64_url(payload)).unwrap();
    assert_eq!(claims["token_type"], "ws");
    assert_eq!(claims["user_id"], 7);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1800
    );

    let mut ws = connect(&b.url(&format!("/ws/notifications/?token={t}")));
    joined(&mut ws);
    let n = json!({"type": "notification", "message": "New reservation created", "notification_type": "reservation",
                   "data": {"reservation_id": 123, "status": "active"}});
    let (code, r) = publish(b.addr, json!({"room": "user:7", "message": n}));
    assert_eq!((code, r["delivered"].as_u64()), (200, Some(1)));
    assert_eq!(unpositioned(recv(&mut ws)), n);

    // The main JWT is refused on the socket; a ws-typed token signed with the main key too.
    let main = token(json!(7), json!({}));
    let mut ws = connect(&b.url(&format!("/ws/notifications/?token={main}")));
    assert_eq!(expect_close(&mut ws).0, 4001);
    let forged = token(json!(7), json!({"token_type": "ws"}));
    let mut ws = connect(&b.url(&format!("/ws/notifications/?token={forged}")));
    assert_eq!(expect_close(&mut ws).0, 4001);
    let mut ws = connect(&b.url("/ws/notifications/"));
    assert_eq!(expect_close(&mut ws).0, 4001);

    // The exchange needs the main JWT, not a ws token.
    let st = http_full(b.addr, "GET", "/api/user/ws-token/", &[], b"").0;
    assert_eq!(st, 401);
    let st = http_full(
        b.addr,
        "GET",
        "/api/user/ws-token/",
        &[("Authorization", &format!("Bearer {t}"))],
        b"",
    )
    .0;
    assert_eq!(st, 401);
}

#[test]
fn subscribe_narrows_notifications_by_type() {
    let b = Binary::start(PROTO, &dead_url());
    let t = ws_token(&b, 8);
    let mut narrow = connect(&b.url(&format!("/ws/notifications/?token={t}")));
    let mut all = connect(&b.url(&format!("/ws/notifications/?token={}", ws_token(&b, 8))));
    send(
        &mut narrow,
        json!({"type": "subscribe", "notification_types": ["reservation", "parking_lot"]}),
    );
    joined(&mut narrow);
    joined(&mut all);

    for kind in ["payment", "reservation", "parking_lot"] {
        let n = json!({"type": "notification", "message": kind, "notification_type": kind});
        publish(b.addr, json!({"room": "user:8", "message": n}));
    }
    let untyped = json!({"type": "notification", "message": "no type"});
    publish(b.addr, json!({"room": "user:8", "message": untyped}));
    assert_eq!(recv(&mut narrow)["message"], "reservation");
    assert_eq!(recv(&mut narrow)["message"], "parking_lot");
    assert_silent(&mut narrow, 300);
    let got: Vec<Value> = (0..4).map(|_| recv(&mut all)["message"].clone()).collect();
    assert_eq!(
        got,
        vec![
            json!("payment"),
            json!("reservation"),
            json!("parking_lot"),
            json!("no type")
        ]
    );

    // A new subscription replaces the old one.
    send(
        &mut narrow,
        json!({"type": "subscribe", "notification_types": ["payment"]}),
    );
    joined(&mut narrow);
    publish(
        b.addr,
        json!({"room": "user:8", "message": {"type": "notification", "message": "paid", "notification_type": "payment"}}),
    );
    assert_eq!(recv(&mut narrow)["message"], "paid");
}

/// Waits until the socket is a member of its room (and earlier messages were handled): the
/// protocol declares no ping, so an invalid message's error reply is the round trip.
fn joined(ws: &mut Ws) {
    send(ws, json!({"type": "subscribe"}));
    assert_eq!(recv(ws)["code"], "invalid_message");
}

fn base64_url(s: &str) -> Vec<u8> {
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = table.iter().position(|&t| t == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}
