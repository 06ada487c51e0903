//! Engine core over real sockets: token sources, close codes, authorization, on-connect,
//! replies, broadcasts across shards, the publish API, schema violations, metrics.

mod common;

use common::*;
use serde_json::json;

fn core() -> Engine {
    Engine::start(include_str!("fixtures/core.toml"))
}

#[test]
fn query_token_admits_and_sends_on_connect_message() {
    let e = core();
    let mut ws = connect(&e.url(&format!("/ws/rooms/lobby/?token={}", member(7))));
    let hello = recv(&mut ws);
    assert_eq!(
        hello,
        json!({"type": "welcome", "room": "lobby", "user": "7", "text": "hello 7 in lobby"})
    );
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(recv(&mut ws), json!({"type": "pong"}));
}

#[test]
fn bearer_header_token_admits() {
    let e = core();
    let auth = format!("Bearer {}", member(8));
    let mut ws = connect_with(&e.url("/ws/rooms/lobby/"), &[("Authorization", &auth)]).unwrap();
    assert_eq!(recv(&mut ws)["user"], "8");
}

#[test]
fn subprotocol_token_admits_and_echoes_only_the_marker() {
    let e = core();
    let proto = format!("jwt, {}", member(9));
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(e.url("/ws/rooms/lobby/"))
            .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", proto.parse().unwrap());
    let addr = e.addr;
    let stream = std::net::TcpStream::connect(addr).unwrap();
    let (mut ws, resp) = tungstenite::client(req, stream).unwrap();
    assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), "jwt");
    assert_eq!(recv(&mut ws)["user"], "9");
}

#[test]
fn each_token_failure_gets_its_declared_close_code() {
    let e = core();
    let cases = [
        ("missing", String::new(), 4005),
        ("malformed", "not.a.jwt".to_owned(), 4001),
        ("garbage", "abc".to_owned(), 4001),
        (
            "expired",
            token_with(
                SECRET,
                jsonwebtoken::Algorithm::HS256,
                json!(1),
                json!({"role": "member"}),
                now() - 120,
            ),
            4002,
        ),
        (
            "wrong signature",
            token_with(
                "another-secret-that-is-also-32-bytes-long!",
                jsonwebtoken::Algorithm::HS256,
                json!(1),
                json!({"role": "member"}),
                now() + 60,
            ),
            4001,
        ),
        (
            "wrong algorithm",
            token_with(
                SECRET,
                jsonwebtoken::Algorithm::HS512,
                json!(1),
                json!({"role": "member"}),
                now() + 60,
            ),
            4001,
        ),
        (
            "refresh token",
            token(json!(1), json!({"role": "member", "token_type": "refresh"})),
            4001,
        ),
    ];
    for (what, tok, code) in cases {
        let url = if tok.is_empty() {
            e.url("/ws/rooms/lobby/")
        } else {
            e.url(&format!("/ws/rooms/lobby/?token={tok}"))
        };
        let mut ws = connect(&url);
        let (got, reason) = expect_close(&mut ws);
        assert_eq!(got, code, "{what}: reason {reason}");
    }
    assert!(
        e.metric(
            "beacon_handshakes_rejected_total",
            &["reason=\"token_expired\""]
        ) >= 1.0
    );
    assert!(
        e.metric(
            "beacon_handshakes_rejected_total",
            &["reason=\"token_invalid\""]
        ) >= 4.0
    );
}

#[test]
fn authorization_rules_refuse_with_declared_codes() {
    let e = core();
    let mut ws = connect(&e.url(&format!(
        "/ws/rooms/lobby/?token={}",
        token(json!(3), json!({"role": "guest"}))
    )));
    assert_eq!(expect_close(&mut ws), (4003, "Forbidden".to_owned()));
    // Path user id must equal the token's: 5 vs "5" are the same user.
    let mut ok = connect(&e.url(&format!(
        "/ws/inbox/5/?token={}",
        token(json!("5"), json!({}))
    )));
    assert_silent(&mut ok, 100);
    let mut bad = connect(&e.url(&format!(
        "/ws/inbox/6/?token={}",
        token(json!(5), json!({}))
    )));
    assert_eq!(expect_close(&mut bad).0, 4006);
    // A non-integer id where the path declares int: no such endpoint.
    assert_eq!(
        connect_with(
            &e.url(&format!(
                "/ws/inbox/abc/?token={}",
                token(json!(5), json!({}))
            )),
            &[]
        )
        .err(),
        Some(404)
    );
    assert_eq!(connect_with(&e.url("/ws/nowhere/"), &[]).err(), Some(404));
}

#[test]
fn broadcast_reaches_members_accepted_on_both_shards() {
    let e = core();
    // SO_REUSEPORT spreads accepts over both shards; with 12 sockets both take some (the
    // hand-off counter proves a cross-shard hand-off happened).
    let mut socks: Vec<_> = (0..12)
        .map(|i| {
            let mut ws = connect(&e.url(&format!("/ws/rooms/blue/?token={}", member(100 + i))));
            recv(&mut ws);
            ws
        })
        .collect();
    assert!(
        e.metric("beacon_handoffs_total", &[]) >= 1.0,
        "expected at least one cross-shard hand-off"
    );
    send(
        &mut socks[0],
        json!({"type": "say", "text": "hi all", "mood": "happy", "junk": "dropped"}),
    );
    for ws in socks.iter_mut() {
        let m = recv(ws);
        assert_eq!(m["type"], "said");
        assert_eq!(m["text"], "hi all");
        assert_eq!(m["mood"], "happy");
        assert_eq!(m["sender"], "100");
        assert!(m["id"].as_u64().unwrap() > 0);
        assert!(m["at"].as_str().unwrap().ends_with('Z'));
        assert!(
            m.get("junk").is_none(),
            "undeclared fields are not forwarded"
        );
    }
    // exclude_sender: everyone but the sender.
    send(&mut socks[1], json!({"type": "shout", "text": "psst"}));
    for (i, ws) in socks.iter_mut().enumerate() {
        if i == 1 {
            continue;
        }
        assert_eq!(recv(ws)["text"], "psst");
    }
    assert_silent(&mut socks[1], 200);
}

#[test]
fn schema_violations_get_error_replies_then_close() {
    let e = core();
    let mut ws = connect(&e.url(&format!("/ws/rooms/lobby/?token={}", member(1))));
    recv(&mut ws);
    send(&mut ws, json!({"type": "say"}));
    let err = recv(&mut ws);
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "invalid_message");
    assert!(err["message"].as_str().unwrap().contains("text"));
    send(
        &mut ws,
        json!({"type": "say", "text": "x", "mood": "angry"}),
    );
    assert_eq!(recv(&mut ws)["code"], "invalid_message");
    ws.send(tungstenite::Message::text("{not json")).unwrap();
    assert_eq!(recv(&mut ws)["code"], "invalid_json");
    send(&mut ws, json!({"type": "nope"}));
    // max_errors = 3: the fourth error closes with policy violation.
    assert_eq!(expect_close(&mut ws).0, 1008);
}

#[test]
fn publish_api_reaches_rooms_on_both_shards() {
    let e = core();
    let nr = e.shared.nr_shards;
    // Find one room owned by each shard.
    let mut rooms = vec![None; nr];
    for i in 0..100 {
        let r = format!("r{i}");
        let o = beacon::runtime::owner_of(&format!("room:{r}"), nr);
        rooms[o].get_or_insert(r);
    }
    for r in rooms.into_iter().flatten() {
        let mut a = connect(&e.url(&format!("/ws/rooms/{r}/?token={}", member(1))));
        let mut b = connect(&e.url(&format!("/ws/rooms/{r}/?token={}", member(2))));
        recv(&mut a);
        recv(&mut b);
        // Several requests so both accepting shards serve some of them.
        for n in 0..4 {
            let (status, body) = publish(
                e.addr,
                json!({"room": format!("room:{r}"), "message": {"type": "said", "text": format!("n{n}")}}),
            );
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["delivered"], 2);
            assert_eq!(recv(&mut a)["text"], format!("n{n}"));
            assert_eq!(recv(&mut b)["text"], format!("n{n}"));
        }
    }
    let (status, body) = publish(
        e.addr,
        json!([
            {"room": "room:nobody", "message": {"type": "said", "text": "x"}},
            {"room": "room:nobody2", "message": {"type": "said", "text": "y"}},
        ]),
    );
    assert_eq!(status, 200);
    assert_eq!(body["delivered"], 0);
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
}

#[test]
fn publish_api_refuses_bad_requests() {
    let e = core();
    let (s, _) = http(e.addr, "POST", "/api/publish", &[], b"{}");
    assert_eq!(s, 401);
    let (s, _) = http(
        e.addr,
        "POST",
        "/api/publish",
        &[("Authorization", "Bearer wrong")],
        b"{}",
    );
    assert_eq!(s, 401);
    let auth = format!("Bearer {API_KEY}");
    let h = [("Authorization", auth.as_str())];
    assert_eq!(http(e.addr, "POST", "/api/publish", &h, b"{nope").0, 400);
    assert_eq!(
        publish(
            e.addr,
            json!({"room": "room:a", "message": {"type": "said"}})
        )
        .0,
        400
    );
    assert_eq!(
        publish(
            e.addr,
            json!({"room": "room:a", "message": {"type": "ping"}})
        )
        .0,
        404
    );
    assert_eq!(
        publish(e.addr, json!({"message": {"type": "said", "text": "x"}})).0,
        400
    );
    // A bad item fails the whole batch: nothing is delivered.
    let mut ws = connect(&e.url(&format!("/ws/rooms/atomic/?token={}", member(1))));
    recv(&mut ws);
    let (s, _) = publish(
        e.addr,
        json!([
            {"room": "room:atomic", "message": {"type": "said", "text": "ok"}},
            {"room": "room:atomic", "message": {"type": "said"}},
        ]),
    );
    assert_eq!(s, 400);
    assert_silent(&mut ws, 200);
    assert_eq!(http(e.addr, "GET", "/api/publish", &h, b"").0, 405);
    assert_eq!(http(e.addr, "GET", "/nope", &[], b"").0, 404);
    let big = vec![b'x'; 2 << 20];
    assert_eq!(http(e.addr, "POST", "/api/publish", &h, &big).0, 413);
}

#[test]
fn first_message_authentication() {
    let e = core();
    let mut ws = connect(&e.url("/ws/first/"));
    send(
        &mut ws,
        json!({"type": "authenticate", "token": member(42)}),
    );
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(recv(&mut ws), json!({"type": "pong"}));
    let (s, body) = publish(
        e.addr,
        json!({"room": "user:42", "message": {"type": "said", "text": "direct"}}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(recv(&mut ws)["text"], "direct");

    let mut late = connect(&e.url("/ws/first/"));
    assert_eq!(
        expect_close(&mut late).0,
        4007,
        "no auth message within auth_timeout"
    );
    let mut wrong = connect(&e.url("/ws/first/"));
    send(&mut wrong, json!({"type": "ping"}));
    assert_eq!(expect_close(&mut wrong).0, 4005);
}

#[test]
fn health_and_metrics() {
    let e = core();
    assert_eq!(http(e.addr, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(http(e.addr, "GET", "/readyz", &[], b"").0, 200);
    let mut ws = connect(&e.url(&format!("/ws/rooms/m/?token={}", member(1))));
    recv(&mut ws);
    send(&mut ws, json!({"type": "ping"}));
    recv(&mut ws);
    let m = e.metrics();
    for series in [
        "beacon_connections{",
        "beacon_connections_opened_total{",
        "beacon_connections_closed_total{",
        "beacon_handshakes_rejected_total{",
        "beacon_messages_received_total{",
        "beacon_messages_sent_total{",
        "beacon_received_bytes_total{",
        "beacon_sent_bytes_total{",
        "beacon_queue_drops_total{",
        "beacon_publish_latency_seconds_bucket{",
        "beacon_ready ",
    ] {
        assert!(m.contains(series), "missing {series}");
    }
    assert!(metric_sum(&m, "beacon_connections", &[]) >= 1.0);
    assert!(metric_sum(&m, "beacon_messages_received_total", &[]) >= 1.0);
    assert!(
        !m.contains("user=") && !m.contains("room=") && !m.contains("user_id"),
        "no per-user or per-room labels"
    );
    let before = metric_sum(&m, "beacon_publishes_total", &[]);
    publish(
        e.addr,
        json!({"room": "room:m", "message": {"type": "said", "text": "x"}}),
    );
    assert_eq!(e.metric("beacon_publishes_total", &[]), before + 1.0);
    assert!(e.metric("beacon_publish_latency_seconds_count", &[]) >= 1.0);
}

#[test]
fn default_protocol_booking_flow() {
    let e = Engine::default_protocol();
    // Staff by claim: admitted without asking the backend (none runs here).
    let tok = token(json!(12), json!({"is_staff": true}));
    let mut ws = connect(&e.url(&format!("/ws/bookings/abc-123/?token={tok}")));
    assert_eq!(
        recv(&mut ws),
        json!({"type": "connection_established", "booking_id": "abc-123", "message": "Connected to booking updates"})
    );
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(recv(&mut ws), json!({"type": "pong"}));
    let status = json!({"type": "booking_status", "booking_id": "abc-123", "status": "on_the_way", "event_type": "booking_on_the_way", "actor": "Worker Name", "timestamp": "2026-01-03T11:00:00Z"});
    let (s, b) = publish(
        e.addr,
        json!({"room": "booking:abc-123", "message": status}),
    );
    assert_eq!((s, b["delivered"].as_u64()), (200, Some(1)));
    assert_eq!(unpositioned(recv(&mut ws)), status);
    let mut n = connect(&e.url(&format!("/ws/notifications/?token={tok}")));
    let note = json!({"type": "notification", "title": "Hi", "message": "Your worker is near"});
    publish(e.addr, json!({"room": "user:12", "message": note}));
    assert_eq!(unpositioned(recv(&mut n)), note);
    let mut anon = connect(&e.url("/ws/bookings/abc-123/"));
    assert_eq!(expect_close(&mut anon).0, 4001);
    // Anyone else is the backend's to admit; with no backend answering (a port nothing
    // listens on, rather than the default :8000 another program may hold), the socket is
    // closed with the declared code, never let in.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let e = Engine::start_with(
        &std::fs::read_to_string(root().join("protocol.toml")).unwrap(),
        2,
        |c| c.backend_url = dead_url,
    );
    let user = token(json!(13), json!({"role": "customer"}));
    let mut ws = connect(&e.url(&format!("/ws/bookings/abc-123/?token={user}")));
    assert_eq!(
        expect_close(&mut ws),
        (1013, "Authorization unavailable".into())
    );
}

/// The open variant is a named choice: any signed-in user follows any booking, no backend.
#[test]
fn the_open_hunarmitra_variant_admits_any_signed_in_user() {
    let e = Engine::start(
        &std::fs::read_to_string(root().join("config/protocols/hunarmitra-open.toml")).unwrap(),
    );
    let tok = token(json!(13), json!({}));
    let mut ws = connect(&e.url(&format!("/ws/bookings/abc-123/?token={tok}")));
    assert_eq!(recv(&mut ws)["type"], "connection_established");
}

#[test]
fn a_publish_right_after_open_always_finds_the_socket() {
    // The 101 is written by the room's owner after the socket joined the room, so an app that
    // publishes as soon as its client's `open` fires never misses it, on either shard.
    let e = Engine::default_protocol();
    for uid in 0..20 {
        let mut ws = connect(&e.url(&format!(
            "/ws/notifications/?token={}",
            token(json!(uid), json!({}))
        )));
        let note = json!({"type": "notification", "title": "t", "message": format!("m{uid}")});
        let (s, body) = publish(
            e.addr,
            json!({"room": format!("user:{uid}"), "message": note}),
        );
        assert_eq!((s, body["delivered"].as_u64()), (200, Some(1)), "uid {uid}");
        assert_eq!(unpositioned(recv(&mut ws)), note);
    }
}

#[test]
fn members_leaving_in_any_order_keep_the_room_exact() {
    let e = core();
    let mut socks: Vec<Option<Ws>> = (0..6)
        .map(|i| {
            let mut ws = connect(&e.url(&format!("/ws/rooms/churn/?token={}", member(200 + i))));
            recv(&mut ws);
            Some(ws)
        })
        .collect();
    // Leave from the middle, the front and the back; after each, a publish reaches exactly the
    // members still there.
    for leave in [2usize, 0, 5, 3] {
        let mut ws = socks[leave].take().unwrap();
        ws.close(None).unwrap();
        let _ = expect_close(&mut ws);
        let left = socks.iter().filter(|s| s.is_some()).count() as u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (s, b) = publish(
                e.addr,
                json!({"room": "room:churn", "message": {"type": "said", "text": format!("after {leave}")}}),
            );
            assert_eq!(s, 200);
            for ws in socks.iter_mut().flatten() {
                assert_eq!(recv(ws)["text"], format!("after {leave}"));
            }
            // The close is processed asynchronously on the owner; wait until it is counted.
            if b["delivered"].as_u64() == Some(left) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "room still counts a member that left"
            );
        }
    }
}
