//! UmEmployed chat and notifications (seed 002) on the real binary serving
//! config/protocols/umemployed.toml, with a real HTTP server answering the
//! `conversation_access` hook: every flow and close code the app's doc describes.

mod apps_support;
mod common;

use apps_support::{settle, skip_to, Backend, Binary};
use common::*;
use serde_json::{json, Value};

const PROTO: &str = "config/protocols/umemployed.toml";

/// Conversation 5 has participants 1 and 2.
fn backend() -> Backend {
    Backend::start(|_, req| {
        let conv = req["path"]["conversation_id"].as_str().unwrap_or("");
        let user = req["user_id"].as_i64().unwrap_or(0);
        if conv == "5" && (user == 1 || user == 2) {
            (200, r#"{"allow": true}"#.into())
        } else if conv == "404" {
            (403, "{}".into())
        } else {
            (200, r#"{"allow": false}"#.into())
        }
    })
}

fn john() -> String {
    token(json!(1), json!({"first_name": "John", "last_name": "Doe"}))
}
fn jane() -> String {
    token(json!(2), json!({"first_name": "Jane", "last_name": "Roe"}))
}

fn join(b: &Binary, t: &str) -> Ws {
    connect(&b.url(&format!("/ws/chat/5/?token={t}")))
}

#[test]
fn close_codes_are_the_documented_ones() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    let mut ws = connect(&b.url("/ws/chat/5/?token=garbage"));
    assert_eq!(expect_close(&mut ws), (4001, "Invalid JWT token".into()));
    let expired = token_with(
        SECRET,
        jsonwebtoken::Algorithm::HS256,
        json!(1),
        json!({}),
        now() - 5,
    );
    let mut ws = connect(&b.url(&format!("/ws/chat/5/?token={expired}")));
    assert_eq!(expect_close(&mut ws), (4002, "Expired JWT token".into()));
    let mut ws = connect(&b.url("/ws/chat/5/"));
    assert_eq!(expect_close(&mut ws), (4003, "Missing JWT token".into()));
    let outsider = token(json!(3), json!({}));
    let mut ws = connect(&b.url(&format!("/ws/chat/5/?token={outsider}")));
    assert_eq!(expect_close(&mut ws), (4004, "Access denied".into()));
    // A conversation that does not exist (the backend answers 403).
    let mut ws = connect(&b.url(&format!("/ws/chat/404/?token={}", john())));
    assert_eq!(expect_close(&mut ws).0, 4004);
    let mut ws = connect(&b.url(&format!("/ws/notifications/2/?token={}", john())));
    assert_eq!(expect_close(&mut ws), (4005, "User ID mismatch".into()));
    let mut ws = connect(&b.url("/ws/notifications/1/"));
    assert_eq!(expect_close(&mut ws).0, 4003);
}

#[test]
fn header_token_presence_chat_typing_and_read_receipts() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    let mut a = connect_with(
        &b.url("/ws/chat/5/"),
        &[("Authorization", &format!("Bearer {}", john()))],
    )
    .unwrap();
    let chat = |m: &str| json!({"type": "chat_message", "message": {"content": m}});
    skip_to(&mut a, &settle(b.addr, "chat:5", chat, 1));
    let mut j = join(&b, &jane());
    assert_eq!(
        recv(&mut a),
        json!({"type": "user_status", "user_id": 2, "status": "online"})
    );

    send(
        &mut a,
        json!({"type": "chat_message", "message": "Hello there!", "message_type": "text"}),
    );
    for ws in [&mut a, &mut j] {
        let m = recv(ws);
        assert_eq!(m["type"], "chat_message");
        let msg = &m["message"];
        assert!(msg["id"].is_u64());
        assert_eq!(msg["content"], "Hello there!");
        assert_eq!(
            msg["sender"],
            json!({"id": 1, "first_name": "John", "last_name": "Doe"})
        );
        assert_eq!(msg["message_type"], "text");
        assert!(msg["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    // Typing reaches the others only, with the sender's user.
    send(
        &mut a,
        json!({"type": "typing_indicator", "is_typing": true}),
    );
    assert_eq!(
        recv(&mut j),
        json!({"type": "typing_indicator", "user": {"id": 1, "first_name": "John", "last_name": "Doe"}, "is_typing": true})
    );
    assert_silent(&mut a, 200);

    send(&mut j, json!({"type": "message_read", "message_id": 123}));
    let r = recv(&mut a);
    assert_eq!(r["type"], "message_read");
    assert_eq!(r["message_id"], 123);
    assert_eq!(
        r["read_by"],
        json!({"id": 2, "first_name": "Jane", "last_name": "Roe"})
    );
    assert!(r["read_at"].is_string());
    assert_silent(&mut j, 200);

    // Jane leaves: John sees her go offline.
    j.close(None).unwrap();
    let _ = j.flush();
    loop {
        let m = recv(&mut a);
        if m["type"] == "user_status" {
            assert_eq!(
                m,
                json!({"type": "user_status", "user_id": 2, "status": "offline"})
            );
            break;
        }
    }
}

#[test]
fn replies_reactions_edits_deletions_and_validation() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    let mut a = join(&b, &john());
    let chat = |m: &str| json!({"type": "chat_message", "message": {"content": m}});
    skip_to(&mut a, &settle(b.addr, "chat:5", chat, 1));
    let mut j = join(&b, &jane());
    assert_eq!(recv(&mut a)["status"], "online");

    send(
        &mut j,
        json!({"type": "chat_message", "message": "Re: hi", "reply_to": 123,
                        "attachment": {"url": "https://cdn/x.png", "name": "x.png"}}),
    );
    let m = recv(&mut a);
    assert_eq!(m["message"]["reply_to"], 123);
    assert_eq!(m["message"]["attachment"]["name"], "x.png");
    assert_eq!(m["message"]["sender"]["id"], 2);
    recv(&mut j);

    send(
        &mut a,
        json!({"type": "message_reaction", "message_id": 123, "reaction": "👍"}),
    );
    for ws in [&mut a, &mut j] {
        let r = recv(ws);
        assert_eq!(
            (r["type"].as_str(), r["reaction"].as_str()),
            (Some("message_reaction"), Some("👍"))
        );
        assert_eq!(r["user"]["id"], 1);
    }
    send(
        &mut a,
        json!({"type": "message_edit", "message_id": 123, "content": "edited"}),
    );
    for ws in [&mut a, &mut j] {
        let r = recv(ws);
        assert_eq!(
            (r["type"].as_str(), r["content"].as_str()),
            (Some("message_edit"), Some("edited"))
        );
        assert_eq!(r["edited_by"], 1);
    }
    send(&mut a, json!({"type": "message_delete", "message_id": 123}));
    for ws in [&mut a, &mut j] {
        let r = recv(ws);
        assert_eq!(
            (r["type"].as_str(), r["message_id"].as_i64()),
            (Some("message_delete"), Some(123))
        );
    }

    // Empty messages are dropped; malformed ones answered with an error, socket kept.
    send(&mut a, json!({"type": "chat_message", "message": "   "}));
    assert_silent(&mut j, 200);
    send(
        &mut a,
        json!({"type": "typing_indicator", "is_typing": "yes"}),
    );
    let e: Value = recv(&mut a);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid_message"))
    );
}

#[test]
fn notifications_go_to_the_users_own_socket_only() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    let mut mine = connect(&b.url(&format!("/ws/notifications/1/?token={}", john())));
    let mut hers = connect(&b.url(&format!("/ws/notifications/2/?token={}", jane())));
    let note = |m: &str| json!({"type": "notification", "notification": {"title": m}});
    skip_to(&mut mine, &settle(b.addr, "user:1", note, 1));
    skip_to(&mut hers, &settle(b.addr, "user:2", note, 1));
    let n = json!({"type": "notification", "notification": {
        "id": 789, "title": "New Message", "message": "You have a new message from John Doe",
        "notification_type": "message", "timestamp": "2025-09-24T10:30:00Z", "is_read": false,
        "data": {"conversation_id": 123, "sender_id": 456}}});
    let (code, r) = publish(b.addr, json!({"room": "user:1", "message": n}));
    assert_eq!((code, r["delivered"].as_u64()), (200, Some(1)));
    assert_eq!(unpositioned(recv(&mut mine)), n);
    assert_silent(&mut hers, 300);

    // The backend publishes chat messages created through its REST API the same way.
    let mut a = join(&b, &john());
    let chat = |m: &str| json!({"type": "chat_message", "message": {"content": m}});
    skip_to(&mut a, &settle(b.addr, "chat:5", chat, 1));
    let m = json!({"type": "chat_message", "message": {"id": 9, "content": "from REST"}});
    publish(b.addr, json!({"room": "chat:5", "message": m}));
    assert_eq!(unpositioned(recv(&mut a)), m);
}
