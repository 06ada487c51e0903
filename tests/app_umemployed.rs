//! UmEmployed chat and notifications (seed 002) on the real binary serving
//! config/protocols/umemployed.toml, with a stand-in HTTP server answering the
//! `conversation_access` hook: every close code the app's doc describes, notifications and
//! presence. Chat messages, receipts, reactions, edits and deletions are stored by the backend:
//! tests/django_backend.rs replays them against the real example backend, and
//! tests/forwards.rs against a misbehaving one.

mod apps_support;
mod common;

use apps_support::{settle, skip_to, Backend, Binary};
use common::*;
use serde_json::json;

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

#[test]
fn presence_is_per_user_not_per_tab() {
    let be = backend();
    let b = Binary::start(PROTO, &be.url());
    let mut a = join(&b, &john());
    let chat = |m: &str| json!({"type": "chat_message", "message": {"content": m}});
    skip_to(&mut a, &settle(b.addr, "chat:5", chat, 1));
    // Jane opens two tabs: John hears her come online once.
    let mut tab1 = join(&b, &jane());
    assert_eq!(
        recv(&mut a),
        json!({"type": "user_status", "user_id": 2, "status": "online"})
    );
    // A joining socket learns who is already there.
    assert_eq!(
        recv(&mut tab1),
        json!({"type": "user_status", "user_id": 1, "status": "online"})
    );
    let mut tab2 = join(&b, &jane());
    quiet_until(&mut a, &settle(b.addr, "chat:5", chat, 3));
    // Typing from the second tab reaches John: it is in the room.
    send(
        &mut tab2,
        json!({"type": "typing_indicator", "is_typing": true}),
    );
    assert_eq!(recv(&mut a)["type"], "typing_indicator");
    // The first tab closes: Jane is still online; the second closes: she is offline.
    tab1.close(None).unwrap();
    let _ = tab1.flush();
    quiet_until(&mut a, &settle(b.addr, "chat:5", chat, 2));
    tab2.close(None).unwrap();
    let _ = tab2.flush();
    assert_eq!(
        recv(&mut a),
        json!({"type": "user_status", "user_id": 2, "status": "offline"})
    );
}

/// Reads up to the marker's message, failing on any presence news before it (presence is
/// rendered on the room's shard before a later publish reaches the room).
fn quiet_until(ws: &mut Ws, marker: &str) {
    loop {
        let m = recv(ws);
        assert_ne!(m["type"], "user_status", "{m}");
        if m["message"]["content"] == marker {
            return;
        }
    }
}
