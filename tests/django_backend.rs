//! The seed apps against the real example backend (examples/django under uvicorn) and the
//! real `beacon` binary: stock simplejwt tokens minted by Django's own token endpoint, hooks
//! answered from Django's database, events published by Django's views.

mod apps_support;
mod common;

use apps_support::Binary;
use common::*;
use serde_json::{json, Value};

/// Django and the Beacon it publishes to (Beacon's port is chosen first and given to both).
fn pair(protocol: &str) -> Option<(Django, Binary)> {
    let python = require_django()?;
    let port = free_port();
    let django = Django::start(&python, port);
    let beacon = Binary::start_on(protocol, &django.url(), port);
    Some((django, beacon))
}

fn ws(b: &Binary, path: &str, token: &str) -> Ws {
    connect(&b.url(&format!("{path}?token={token}")))
}

#[test]
fn hunarmitra_booking_flow_with_stock_tokens() {
    let Some((dj, b)) = pair("config/protocols/hunarmitra.toml") else {
        return;
    };
    let booking = dj.demo["booking"].as_str().unwrap().to_owned();
    let path = format!("/ws/bookings/{booking}/");
    let (owner, worker) = (dj.token("asha"), dj.token("ravi"));

    // The owner by query token, the worker by subprotocol: Django's hook says yes to both.
    let mut owner_ws = ws(&b, &path, &owner);
    let welcome = recv(&mut owner_ws);
    assert_eq!(welcome["type"], "connection_established");
    assert_eq!(welcome["booking_id"], booking.as_str());
    let mut worker_ws = connect_with(
        &b.url(&path),
        &[("Sec-WebSocket-Protocol", &format!("jwt, {worker}"))],
    )
    .expect("worker admitted");
    assert_eq!(recv(&mut worker_ws)["type"], "connection_established");
    // Staff: a stock token carries no is_staff claim, so Django's hook decides from the row.
    let mut staff_ws = ws(&b, &path, &dj.token("admin"));
    assert_eq!(recv(&mut staff_ws)["type"], "connection_established");

    // Anyone else is refused with the documented 4003, from Django's answer.
    let mut stranger = ws(&b, &path, &dj.token("sam"));
    assert_eq!(expect_close(&mut stranger).0, 4003);
    // A booking that does not exist: refused too.
    let mut nobody = ws(
        &b,
        "/ws/bookings/00000000-0000-0000-0000-000000000000/",
        &owner,
    );
    assert_eq!(expect_close(&mut nobody).0, 4003);
    // A token Django did not sign: 4001 before any hook.
    let forged = token_with(
        "another-secret-that-is-at-least-32-bytes-long",
        jsonwebtoken::Algorithm::HS256,
        json!(dj.user("asha")),
        json!({}),
        now() + 600,
    );
    let mut forged_ws = ws(&b, &path, &forged);
    assert_eq!(expect_close(&mut forged_ws).0, 4001);

    // The worker moves the booking on through Django's API; Django publishes after commit and
    // every follower hears it, in order.
    for status in ["on_the_way", "arrived", "completed"] {
        let (code, body) = dj.post(
            &format!("/api/bookings/{booking}/status/"),
            Some(&worker),
            json!({ "status": status }),
        );
        assert_eq!(code, 200, "{body} {}", dj.log());
        for sock in [&mut owner_ws, &mut worker_ws, &mut staff_ws] {
            let ev = recv(sock);
            assert_eq!(ev["type"], "booking_status", "{ev}");
            assert_eq!(ev["booking_id"], booking.as_str());
            assert_eq!(ev["status"], status);
            assert_eq!(ev["event_type"], format!("booking_{status}"));
            assert_eq!(ev["actor"], "Ravi Kumar");
        }
    }
    // The stranger cannot move it either (Django's own check).
    let (code, _) = dj.post(
        &format!("/api/bookings/{booking}/status/"),
        Some(&dj.token("sam")),
        json!({"status": "cancelled"}),
    );
    assert_eq!(code, 403);
    let (code, state) = dj.get(&format!("/api/bookings/{booking}/"), &owner);
    assert_eq!((code, &state["status"]), (200, &Value::from("completed")));
}
