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

/// An id as text: simplejwt and JSON may carry it as a number or a string.
fn id(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads until a message of type `ty` (presence and other traffic may come first).
fn next_of(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let m = recv(ws);
        if m["type"] == ty {
            return m;
        }
    }
}

#[test]
fn umemployed_chat_is_stored_by_django_and_survives_a_beacon_restart() {
    let Some((dj, b)) = pair("config/protocols/umemployed.toml") else {
        return;
    };
    let conv = dj.demo["conversation"].as_u64().unwrap();
    let path = format!("/ws/chat/{conv}/");
    let (asha_id, ravi_id) = (dj.user("asha"), dj.user("ravi"));
    let (asha, ravi) = (dj.token("asha"), dj.token("ravi"));

    // Not a participant: Django's hook says no, the documented 4004.
    let mut sam = ws(&b, &path, &dj.token("sam"));
    assert_eq!(expect_close(&mut sam).0, 4004);

    let mut a = ws(&b, &path, &asha);
    let mut r = ws(&b, &path, &ravi);
    let online = next_of(&mut a, "user_status");
    assert_eq!(
        (id(&online["user_id"]), &online["status"]),
        (ravi_id.to_string(), &json!("online"))
    );

    // A message gets its database id and the sender's name from Django.
    send(
        &mut a,
        json!({"type": "chat_message", "message": "Hello there!", "message_type": "text"}),
    );
    let mut first = 0;
    for sock in [&mut a, &mut r] {
        let m = next_of(sock, "chat_message")["message"].clone();
        first = m["id"].as_u64().expect("a database id");
        assert_eq!(m["content"], "Hello there!");
        assert_eq!(
            m["sender"],
            json!({"id": asha_id, "first_name": "Asha", "last_name": "Rao"})
        );
        assert_eq!(m["message_type"], "text");
        assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    // A reply with an attachment.
    send(
        &mut r,
        json!({"type": "chat_message", "message": "Re: hi", "reply_to": first,
               "attachment": {"url": "https://cdn.example/x.png", "name": "x.png"}}),
    );
    let reply = next_of(&mut a, "chat_message")["message"].clone();
    let second = reply["id"].as_u64().unwrap();
    assert!(second > first);
    assert_eq!(reply["reply_to"], first);
    assert_eq!(reply["attachment"]["name"], "x.png");
    assert_eq!(reply["sender"]["first_name"], "Ravi");
    assert_eq!(next_of(&mut r, "chat_message")["message"]["id"], second);

    // Typing is relayed by Beacon alone (nothing to store), to the others only.
    send(
        &mut r,
        json!({"type": "typing_indicator", "is_typing": true}),
    );
    let t = next_of(&mut a, "typing_indicator");
    assert_eq!(
        (id(&t["user"]["id"]), &t["is_typing"]),
        (ravi_id.to_string(), &json!(true))
    );

    // A read receipt is recorded once: the others hear it the first time only.
    send(&mut r, json!({"type": "message_read", "message_id": first}));
    let read = next_of(&mut a, "message_read");
    assert_eq!(read["message_id"], first);
    assert_eq!(
        read["read_by"],
        json!({"id": ravi_id, "first_name": "Ravi", "last_name": "Kumar"})
    );
    send(&mut r, json!({"type": "message_read", "message_id": first}));
    // Edits and deletions by their author only: the others get the backend's refusal.
    send(
        &mut r,
        json!({"type": "message_edit", "message_id": first, "content": "hijacked"}),
    );
    let e = next_of(&mut r, "error");
    assert_eq!(e["code"], "not_author");
    send(
        &mut r,
        json!({"type": "message_delete", "message_id": first}),
    );
    assert_eq!(next_of(&mut r, "error")["code"], "not_author");
    send(
        &mut r,
        json!({"type": "message_read", "message_id": 999_999}),
    );
    assert_eq!(next_of(&mut r, "error")["code"], "unknown_message");
    send(
        &mut a,
        json!({"type": "message_edit", "message_id": first, "content": "Hello, edited"}),
    );
    // Asha heard nothing of the repeated receipt or the refusals: the edit comes next.
    let edited = recv(&mut a);
    assert_eq!(
        (edited["type"].as_str(), edited["content"].as_str()),
        (Some("message_edit"), Some("Hello, edited"))
    );
    assert_eq!(id(&edited["edited_by"]), asha_id.to_string());
    assert_eq!(next_of(&mut r, "message_edit")["message_id"], first);
    send(
        &mut r,
        json!({"type": "message_reaction", "message_id": first, "reaction": "+1"}),
    );
    for sock in [&mut a, &mut r] {
        let re = next_of(sock, "message_reaction");
        assert_eq!(
            (re["reaction"].as_str(), re["user"]["first_name"].as_str()),
            (Some("+1"), Some("Ravi"))
        );
    }
    send(
        &mut r,
        json!({"type": "message_delete", "message_id": second}),
    );
    for sock in [&mut a, &mut r] {
        assert_eq!(next_of(sock, "message_delete")["message_id"], second);
    }

    let m = b.metrics();
    let forwards = |result: &str| {
        metric_sum(
            &m,
            "beacon_forwards_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    assert_eq!(
        (forwards("accepted"), forwards("refused")),
        (7.0, 3.0),
        "{m}"
    );
    assert_eq!(forwards("unavailable") + forwards("overloaded"), 0.0);
    // Kept-alive connections: far fewer opened than requests made (hooks and forwards).
    let opened = metric_sum(&m, "beacon_backend_connections_opened_total", &[]);
    assert!(opened < 10.0, "{opened} connections for 13 requests\n{m}");

    // Beacon restarts; the conversation is Django's, and reads back the same.
    drop((a, r));
    let port = b.addr.port();
    drop(b);
    let b = Binary::start_on("config/protocols/umemployed.toml", &dj.url(), port);
    let (code, history) = dj.get(&format!("/api/conversations/{conv}/messages/"), &ravi);
    assert_eq!(code, 200, "{history}");
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{history}");
    assert_eq!(
        (msgs[0]["id"].as_u64(), msgs[0]["content"].as_str()),
        (Some(first), Some("Hello, edited"))
    );
    assert_eq!(msgs[0]["reactions"][0]["reaction"], "+1");
    assert_eq!(
        (msgs[1]["id"].as_u64(), msgs[1]["reply_to"].as_u64()),
        (Some(second), Some(first))
    );
    assert!(msgs[1]["deleted_at"].is_string());
    assert_eq!(history["reads"][first.to_string()], json!([ravi_id]));
    // And the restarted Beacon stores the next message after them.
    let mut a = ws(&b, &path, &asha);
    send(
        &mut a,
        json!({"type": "chat_message", "message": "after the restart"}),
    );
    let after = next_of(&mut a, "chat_message")["message"].clone();
    assert!(after["id"].as_u64().unwrap() > second);
    let (_, history) = dj.get(&format!("/api/conversations/{conv}/messages/"), &asha);
    assert_eq!(history["messages"][2]["content"], "after the restart");
}
