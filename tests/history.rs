//! Room history and resume, end to end: the real `beacon` binary, real sockets, publishes over
//! HTTP and broadcasts over WebSocket (tests/fixtures/history.toml).
//!
//! A client that comes back with its last position gets exactly what it missed, in order,
//! then live messages, with no gap and no duplicate; one that cannot is told why and where the
//! room is now; rooms without history send the same bytes as before.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

const PROTOCOL: &str = "tests/fixtures/history.toml";
const CONFIG: &str = "tests/fixtures/config_test.toml";

fn server() -> BinServer {
    BinServer::start(PROTOCOL, CONFIG)
}

fn open(s: &BinServer, path: &str, since: Option<&Pos>) -> Ws {
    let tok = token(json!(7), json!({}));
    let mut url = s.url(&format!("{path}?token={tok}"));
    match since {
        Some(p) => url.push_str(&format!("&since={}&epoch={}", p.offset, p.epoch)),
        // A client that resumes but has no position yet asks where the room is.
        None => url.push_str("&since="),
    }
    connect(&url)
}

/// Opens a `/ws/rooms/` socket and reads its welcome: the next message is the catch-up.
fn open_room(s: &BinServer, room: &str, since: Option<&Pos>) -> Ws {
    let mut ws = open(s, &format!("/ws/rooms/{room}/"), since);
    assert_eq!(recv(&mut ws)["type"], "welcome");
    ws
}

fn said(room: &str, text: &str) -> Value {
    json!({"room": room, "message": {"type": "said", "text": text}})
}

fn publish_ok(s: &BinServer, body: Value) {
    let (status, answer) = publish(s.addr, body);
    assert_eq!(status, 200, "{answer}");
}

fn raw_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("message") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

fn metrics(s: &BinServer) -> String {
    http(s.addr, "GET", "/metrics", &[], b"").1
}

#[test]
fn resume_after_a_dropped_socket_gets_exactly_the_missed_messages_in_order() {
    let s = server();
    let mut a = open_room(&s, "r1", None);
    let start = recv(&mut a);
    assert_eq!(
        start["type"], "resumed",
        "a fresh join is told where it starts"
    );
    assert_eq!(start["offset"], 0);
    let epoch = pos(&start).epoch;

    let mut stayed = open_room(&s, "r1", None);
    assert_eq!(
        pos(&recv(&mut stayed)),
        Pos {
            offset: 0,
            epoch: epoch.clone()
        }
    );

    // Publish, and a member's own broadcast over the socket: both enter history.
    publish_ok(&s, said("room:r1", "one"));
    send(&mut stayed, json!({"type": "say", "text": "two"}));
    let one = raw_text(&mut a);
    assert_eq!(
        one,
        format!(r#"{{"type":"said","text":"one","offset":1,"epoch":"{epoch}"}}"#)
    );
    let two = recv(&mut a);
    assert_eq!(
        (two["text"].as_str(), two["offset"].as_u64()),
        (Some("two"), Some(2))
    );
    let last = pos(&two);
    drop(a);

    // Missed while away: three messages (the last through a declared `[[http]]` endpoint)
    // and a note that does not enter history.
    for t in ["three", "four"] {
        publish_ok(&s, said("room:r1", t));
    }
    let auth = format!("Bearer {}", token(json!(8), json!({})));
    let (status, body) = http(
        s.addr,
        "POST",
        "/api/rooms/r1/say",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"type": "say", "text": "five"}"#,
    );
    assert_eq!(status, 200, "{body}");
    publish_ok(
        &s,
        json!({"room": "room:r1", "message": {"type": "note", "text": "n"}}),
    );

    let mut a = open_room(&s, "r1", Some(&last));
    for (text, offset) in [("three", 3), ("four", 4), ("five", 5)] {
        let m = recv(&mut a);
        assert_eq!(
            (m["type"].as_str(), m["text"].as_str()),
            (Some("said"), Some(text))
        );
        assert_eq!(
            pos(&m),
            Pos {
                offset,
                epoch: epoch.clone()
            }
        );
    }
    let told = recv(&mut a);
    assert_eq!(told["type"], "resumed");
    assert_eq!(
        pos(&told),
        Pos {
            offset: 5,
            epoch: epoch.clone()
        }
    );
    // Then live, with the offsets continuing; the note has none and is sent as it was.
    publish_ok(&s, said("room:r1", "six"));
    assert_eq!(recv(&mut a)["offset"], 6);
    assert_silent(&mut a, 200);

    // The member that stayed got everything live (its own broadcast too), the note byte for
    // byte as before.
    let mut texts = Vec::new();
    for _ in 0..7 {
        texts.push(raw_text(&mut stayed));
    }
    assert_eq!(texts[5], r#"{"type":"note","text":"n"}"#);
    assert!(
        texts[6].ends_with(&format!(r#""offset":6,"epoch":"{epoch}"}}"#)),
        "{}",
        texts[5]
    );

    let m = metrics(&s);
    assert_eq!(metric_sum(&m, "beacon_history_appends_total", &[]), 6.0);
    assert_eq!(
        metric_sum(&m, "beacon_resumes_total", &["outcome=\"recovered\""]),
        1.0
    );
    assert_eq!(metric_sum(&m, "beacon_history_messages", &[]), 6.0);
}

/// An app's existing client sends no position: it is told nothing on joining, and the only
/// change it sees is the two fields on messages that enter history.
/// An endpoint whose token comes in a first message takes the position in the same message
/// (`[resume]`'s field names). The socket joins its room only once that message arrives, so
/// the catch-up meets live messages exactly as with the query form.
#[test]
fn a_first_message_carries_the_position_to_resume_from() {
    let s = server();
    let tok = token(json!(7), json!({}));
    let auth = |query: &str, position: Value| -> Ws {
        let mut ws = connect(&s.url(&format!("/ws/auth/rooms/f1/{query}")));
        let mut m = json!({"type": "authenticate", "token": tok});
        let fields = position.as_object().unwrap().clone();
        m.as_object_mut().unwrap().extend(fields);
        send(&mut ws, m);
        ws
    };
    // No position yet: an offset of null asks where the room is.
    let mut a = auth("", json!({"offset": null}));
    let start = recv(&mut a);
    assert_eq!(
        (start["type"].as_str(), start["offset"].as_u64()),
        (Some("resumed"), Some(0))
    );
    let epoch = pos(&start).epoch;
    publish_ok(&s, said("room:f1", "one"));
    let one = recv(&mut a);
    assert_eq!(
        (one["text"].as_str(), one["offset"].as_u64()),
        (Some("one"), Some(1))
    );
    let last = pos(&one);
    drop(a);

    for t in ["two", "three"] {
        publish_ok(&s, said("room:f1", t));
    }
    publish_ok(
        &s,
        json!({"room": "room:f1", "message": {"type": "note", "text": "n"}}),
    );
    // Back with its position in the message: what it missed, the answer, then live.
    let mut b = auth("", json!({"offset": last.offset, "epoch": last.epoch}));
    for (text, offset) in [("two", 2), ("three", 3)] {
        let m = recv(&mut b);
        assert_eq!(
            (m["type"].as_str(), m["text"].as_str(), m["offset"].as_u64()),
            (Some("said"), Some(text), Some(offset))
        );
    }
    let told = recv(&mut b);
    assert_eq!(
        (told["type"].as_str(), told["offset"].as_u64()),
        (Some("resumed"), Some(3))
    );
    assert_eq!(told["epoch"], epoch.as_str());
    publish_ok(&s, said("room:f1", "four"));
    assert_eq!(recv(&mut b)["offset"], 4, "the note stayed out of history");

    // A position in the query of a first-message endpoint is read too; the message's wins.
    let query = format!("?since=1&epoch={epoch}");
    let mut c = auth(&query, json!({"offset": 3, "epoch": epoch}));
    assert_eq!(
        (
            recv(&mut c)["offset"].as_u64(),
            recv(&mut c)["type"].as_str()
        ),
        (Some(4), Some("resumed"))
    );
    let mut q = auth(&query, json!({}));
    let got: Vec<u64> = (0..3)
        .map(|_| recv(&mut q)["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [2, 3, 4], "two, three, four, and then the answer");
    assert_eq!(recv(&mut q)["type"], "resumed");

    // A position the message cannot state is answered plainly.
    let mut bad = auth("", json!({"offset": 2}));
    let told = recv(&mut bad);
    assert_eq!(
        (
            told["type"].as_str(),
            told["reason"].as_str(),
            told["offset"].as_u64()
        ),
        (Some("reload"), Some("malformed"), Some(4))
    );
    // No position at all: told nothing; the first message it gets is its own, live.
    let mut plain = auth("", json!({}));
    send(&mut plain, json!({"type": "say", "text": "mine"}));
    let m = recv(&mut plain);
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str(), m["offset"].as_u64()),
        (Some("said"), Some("mine"), Some(5))
    );
    assert_eq!(recv(&mut b)["offset"], 5);
}

#[test]
fn a_client_that_does_not_resume_keeps_its_flow() {
    let s = server();
    let url = s.url(&format!(
        "/ws/rooms/old/?token={}",
        token(json!(7), json!({}))
    ));
    let mut ws = connect(&url);
    assert_eq!(raw_text(&mut ws), r#"{"type":"welcome"}"#);
    publish_ok(&s, said("room:old", "hi"));
    let m = recv(&mut ws);
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str(), m["offset"].as_u64()),
        (Some("said"), Some("hi"), Some(1))
    );
    assert_silent(&mut ws, 200);
    assert_eq!(metric_sum(&metrics(&s), "beacon_resumes_total", &[]), 0.0);
}

#[test]
fn rooms_without_history_send_the_same_bytes_as_before() {
    let s = server();
    let mut a = open(
        &s,
        "/ws/plain/p/",
        Some(&Pos {
            offset: 3,
            epoch: "9".into(),
        }),
    );
    let mut b = open(&s, "/ws/plain/p/", None);
    publish_ok(&s, said("plain:p", "hi"));
    assert_eq!(raw_text(&mut a), r#"{"type":"said","text":"hi"}"#);
    assert_eq!(raw_text(&mut b), r#"{"type":"said","text":"hi"}"#);
    send(&mut b, json!({"type": "say", "text": "yo"}));
    assert_eq!(raw_text(&mut a), r#"{"type":"said","text":"yo"}"#);
    assert_silent(&mut a, 200);
    assert_eq!(
        metric_sum(&metrics(&s), "beacon_history_appends_total", &[]),
        0.0
    );
}

/// Publishers hammer one room while clients drop their sockets at arbitrary points and come
/// back with their last position: across all its connections, each client sees every offset
/// exactly once, in order, and each publisher's messages in the order it sent them.
#[test]
fn exactly_once_at_the_seam_under_a_publish_burst_during_reconnects() {
    const PUBLISHERS: usize = 3;
    const EACH: usize = 300;
    const TOTAL: u64 = (PUBLISHERS * EACH) as u64;
    let s = server();
    let addr = s.addr;
    let url = s.url("/ws/rooms/burst/");

    let clients: Vec<_> = (0..3u64)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let tok = token(json!(100 + c), json!({}));
                let mut seed = 0x9E37_79B9u64.wrapping_mul(c + 1);
                let mut next = move |n: u64| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) % n
                };
                let mut last: Option<Pos> = None;
                let mut texts: Vec<String> = Vec::new();
                let mut connections = 0;
                while last.as_ref().is_none_or(|p| p.offset < TOTAL) {
                    let mut u = format!("{url}?token={tok}");
                    match &last {
                        Some(p) => u.push_str(&format!("&since={}&epoch={}", p.offset, p.epoch)),
                        None => u.push_str("&since="),
                    }
                    let mut ws = connect(&u);
                    connections += 1;
                    assert_eq!(recv(&mut ws)["type"], "welcome");
                    // Read a few messages, then drop the socket mid-stream.
                    let budget = 1 + next(40);
                    let mut read = 0;
                    while read < budget && last.as_ref().is_none_or(|p| p.offset < TOTAL) {
                        let m = recv(&mut ws);
                        let p = pos(&m);
                        match m["type"].as_str() {
                            Some("resumed") => {
                                if let Some(l) = &last {
                                    assert_eq!(&p, l, "told a position it was not given");
                                }
                                last = Some(p);
                            }
                            Some("said") => {
                                let l = last.as_ref().expect("a position before any message");
                                assert_eq!(p.epoch, l.epoch);
                                assert_eq!(p.offset, l.offset + 1, "gap or duplicate");
                                texts.push(m["text"].as_str().unwrap().to_owned());
                                last = Some(p);
                                read += 1;
                            }
                            other => panic!("unexpected {other:?}: {m}"),
                        }
                    }
                }
                (texts, connections)
            })
        })
        .collect();
    // The clients joined (or are joining): a client that joins after the first publish
    // starts there, so only what follows its first position is asked of it.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let (status, answer) = publish(addr, said("room:burst", &format!("{p}-{i}")));
                    assert_eq!(status, 200, "{answer}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    for c in clients {
        let (texts, connections) = c.join().unwrap();
        assert!(
            connections > 5,
            "the client should have reconnected many times"
        );
        // Whatever it saw is a suffix of the room: each publisher's part in order, no repeats.
        let mut next_of: HashMap<String, usize> = HashMap::new();
        for t in &texts {
            let (p, i) = t.split_once('-').unwrap();
            let i: usize = i.parse().unwrap();
            if let Some(n) = next_of.get(p) {
                assert_eq!(i, *n, "publisher {p}: out of order or repeated");
            }
            next_of.insert(p.to_owned(), i + 1);
        }
        for p in 0..PUBLISHERS {
            assert_eq!(
                next_of.get(&p.to_string()),
                Some(&EACH),
                "publisher {p}'s last message"
            );
        }
    }
    let m = metrics(&s);
    assert_eq!(
        metric_sum(&m, "beacon_history_appends_total", &[]),
        TOTAL as f64
    );
    assert!(metric_sum(&m, "beacon_resumes_total", &["outcome=\"recovered\""]) > 15.0);
    let lost: f64 = [
        "epoch_changed",
        "overwritten",
        "expired",
        "too_far_behind",
        "ahead_of_history",
        "malformed",
    ]
    .iter()
    .map(|o| metric_sum(&m, "beacon_resumes_total", &[&format!("outcome=\"{o}\"")]))
    .sum();
    assert_eq!(lost, 0.0);
}

#[test]
fn a_restart_changes_the_epoch_and_the_client_is_told_to_reload() {
    let s = server();
    let mut a = open_room(&s, "r", None);
    let before = pos(&recv(&mut a));
    publish_ok(&s, said("room:r", "x"));
    let last = pos(&recv(&mut a));
    assert_eq!(
        last,
        Pos {
            offset: 1,
            epoch: before.epoch.clone()
        }
    );
    drop(a);
    drop(s);

    let s = server();
    let mut a = open_room(&s, "r", Some(&last));
    let told = recv(&mut a);
    assert_eq!(told["type"], "reload");
    assert_eq!(told["reason"], "epoch_changed");
    assert_eq!(told["offset"], 0, "the room's position now");
    assert_ne!(pos(&told).epoch, last.epoch);
    publish_ok(&s, said("room:r", "y"));
    let m = recv(&mut a);
    assert_eq!(
        pos(&m),
        Pos {
            offset: 1,
            epoch: pos(&told).epoch
        }
    );
    let text = metrics(&s);
    assert_eq!(
        metric_sum(
            &text,
            "beacon_resumes_total",
            &["outcome=\"epoch_changed\""]
        ),
        1.0
    );
}

#[test]
fn too_far_behind_overwritten_ahead_and_malformed_are_not_recovered() {
    let s = server();
    let mut a = open(&s, "/ws/small/s/", None);
    let zero = pos(&recv(&mut a));
    let batch = |from: usize, n: usize| -> Value {
        (from..from + n)
            .map(|i| said("small:s", &i.to_string()))
            .collect::<Vec<_>>()
            .into()
    };
    publish_ok(&s, batch(1, 25));
    for i in 1..=25 {
        assert_eq!(recv(&mut a)["offset"], i);
    }
    let reason = |since: &Pos| -> (Value, Vec<u64>) {
        let mut ws = open(&s, "/ws/small/s/", Some(since));
        let mut got = Vec::new();
        loop {
            let m = recv(&mut ws);
            match m["type"].as_str() {
                Some("said") => got.push(m["offset"].as_u64().unwrap()),
                _ => return (m, got),
            }
        }
    };
    let at = |offset| Pos {
        offset,
        epoch: zero.epoch.clone(),
    };
    // 25 missed, 20 allowed in one catch-up.
    let (told, got) = reason(&at(0));
    assert_eq!(
        (told["type"].as_str(), told["reason"].as_str()),
        (Some("reload"), Some("too_far_behind"))
    );
    assert!(got.is_empty(), "never a partial recovery");
    assert_eq!(told["offset"], 25);
    let (told, got) = reason(&at(5));
    assert_eq!(told["type"], "resumed");
    assert_eq!(got, (6..=25).collect::<Vec<_>>());

    publish_ok(&s, batch(26, 40));
    let (told, _) = reason(&at(10));
    assert_eq!(told["reason"], "overwritten", "55 missed, 50 kept");
    let (told, _) = reason(&at(66));
    assert_eq!(told["reason"], "ahead_of_history");
    let mut ws = connect(&s.url(&format!(
        "/ws/small/s/?token={}&since=abc&epoch=1",
        token(json!(7), json!({}))
    )));
    let told = recv(&mut ws);
    assert_eq!(
        (told["reason"].as_str(), told["offset"].as_u64()),
        (Some("malformed"), Some(65))
    );
    let m = metrics(&s);
    for (outcome, n) in [
        ("too_far_behind", 1.0),
        ("overwritten", 1.0),
        ("ahead_of_history", 1.0),
        ("malformed", 1.0),
        ("recovered", 1.0),
    ] {
        assert_eq!(
            metric_sum(
                &m,
                "beacon_resumes_total",
                &[&format!("outcome=\"{outcome}\"")]
            ),
            n,
            "{outcome}"
        );
    }
}

#[test]
fn latest_value_rooms_give_the_newest_value_per_key_at_once() {
    let s = server();
    let loc = |w: &str, n: u32| json!({"room": "track:b1", "message": {"type": "location", "worker_id": w, "lat": n, "lng": 0}});
    for (w, n) in [("a", 1), ("b", 2), ("a", 3)] {
        publish_ok(&s, loc(w, n));
    }
    let mut ws = open(&s, "/ws/tracking/b1/", None);
    let first = recv(&mut ws);
    let second = recv(&mut ws);
    assert_eq!(
        (
            first["worker_id"].as_str(),
            first["lat"].as_u64(),
            first["offset"].as_u64()
        ),
        (Some("b"), Some(2), Some(2))
    );
    assert_eq!(
        (
            second["worker_id"].as_str(),
            second["lat"].as_u64(),
            second["offset"].as_u64()
        ),
        (Some("a"), Some(3), Some(3))
    );
    let told = recv(&mut ws);
    assert_eq!(
        (told["type"].as_str(), told["offset"].as_u64()),
        (Some("resumed"), Some(3))
    );
    publish_ok(&s, loc("b", 4));
    let live = recv(&mut ws);
    assert_eq!(
        (live["worker_id"].as_str(), live["offset"].as_u64()),
        (Some("b"), Some(4))
    );
    let last = pos(&live);
    drop(ws);

    for (w, n) in [("a", 5), ("a", 6), ("c", 7)] {
        publish_ok(&s, loc(w, n));
    }
    // Back from offset 4: only what changed since, newest per key.
    let mut ws = open(&s, "/ws/tracking/b1/", Some(&last));
    let got: Vec<(String, u64)> = (0..2)
        .map(|_| {
            let m = recv(&mut ws);
            (
                m["worker_id"].as_str().unwrap().to_owned(),
                m["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![("a".to_owned(), 6), ("c".to_owned(), 7)]);
    let told = recv(&mut ws);
    assert_eq!(
        (told["type"].as_str(), told["offset"].as_u64()),
        (Some("resumed"), Some(7))
    );
}

/// Presence rendered on the owner (`on_join`, `on_leave`) enters history like any message.
/// A socket's own arrival is not sent to it (`on_join` goes to the rest of the room), so the
/// position it is told on joining is the one before its own `joined`.
#[test]
fn presence_declared_to_enter_history_is_resumed_too() {
    let s = server();
    let lobby = |uid: u64, since: Option<&Pos>| {
        let mut url = s.url(&format!(
            "/ws/lobby/l/?token={}",
            token(json!(uid), json!({}))
        ));
        match since {
            Some(p) => url.push_str(&format!("&since={}&epoch={}", p.offset, p.epoch)),
            None => url.push_str("&since="),
        }
        connect(&url)
    };
    let event = |ws: &mut Ws| {
        let m = recv(ws);
        let user = m["user"].as_str().map(str::to_owned);
        (
            m["type"].as_str().unwrap().to_owned(),
            user,
            m["offset"].as_u64().unwrap(),
        )
    };
    let ev = |t: &str, u: Option<&str>, o: u64| (t.to_owned(), u.map(str::to_owned), o);
    let mut a = lobby(1, None);
    assert_eq!(event(&mut a), ev("resumed", None, 0));
    let mut b = lobby(2, None);
    assert_eq!(event(&mut b), ev("resumed", None, 1), "after a's arrival");
    let m = recv(&mut a);
    assert_eq!(
        (m["type"].as_str(), m["user"].as_str(), m["offset"].as_u64()),
        (Some("joined"), Some("2"), Some(2))
    );
    let last = pos(&m);
    drop(a);
    assert_eq!(event(&mut b), ev("left", Some("1"), 3));
    let mut c = lobby(3, None);
    assert_eq!(event(&mut c), ev("resumed", None, 3));
    assert_eq!(event(&mut b), ev("joined", Some("3"), 4));
    let mut a = lobby(1, Some(&last));
    assert_eq!(event(&mut a), ev("left", Some("1"), 3));
    assert_eq!(event(&mut a), ev("joined", Some("3"), 4));
    assert_eq!(event(&mut a), ev("resumed", None, 4));
    assert_eq!(event(&mut b), ev("joined", Some("1"), 5));
    assert_eq!(event(&mut c), ev("joined", Some("1"), 5));
}

/// The shipped default protocol (booking tracking) resumes booking statuses: a phone that
/// lost its socket gets the statuses it missed, in order, then `resumed`.
#[test]
fn the_default_protocol_resumes_booking_statuses() {
    let s = BinServer::start("protocol.toml", CONFIG);
    // Staff by claim: the default protocol admits them without its backend.
    let tok = token(json!(5), json!({"is_staff": true}));
    let url = |q: &str| s.url(&format!("/ws/bookings/b-9/?token={tok}&{q}"));
    let mut ws = connect(&url("offset="));
    assert_eq!(recv(&mut ws)["type"], "connection_established");
    let start = recv(&mut ws);
    assert_eq!(
        (start["type"].as_str(), start["offset"].as_u64()),
        (Some("resumed"), Some(0))
    );
    let status = |st: &str| json!({"room": "booking:b-9", "message": {"type": "booking_status", "booking_id": "b-9", "status": st}});
    publish_ok(&s, status("confirmed"));
    let last = pos(&recv(&mut ws));
    drop(ws);
    for st in ["on_the_way", "arrived"] {
        publish_ok(&s, status(st));
    }
    // A location fix is live only: it does not enter the booking's history.
    publish_ok(
        &s,
        json!({"room": "booking:b-9", "message": {"type": "location_update", "booking_id": "b-9", "lat": 1.0, "lng": 2.0}}),
    );
    let mut ws = connect(&url(&format!(
        "offset={}&epoch={}",
        last.offset, last.epoch
    )));
    assert_eq!(recv(&mut ws)["type"], "connection_established");
    for (st, offset) in [("on_the_way", 2), ("arrived", 3)] {
        let m = recv(&mut ws);
        assert_eq!(
            (m["status"].as_str(), m["offset"].as_u64()),
            (Some(st), Some(offset))
        );
    }
    let told = recv(&mut ws);
    assert_eq!(
        (told["type"].as_str(), told["offset"].as_u64()),
        (Some("resumed"), Some(3))
    );
}

/// A catch-up the socket's queue could not hold in bytes would close it as a slow consumer on
/// every resume: the client is told it is too far behind instead.
#[test]
fn a_catch_up_too_large_for_the_queue_is_not_recovered() {
    let dir = TempDir::new("history");
    let src = std::fs::read_to_string(root().join(PROTOCOL))
        .unwrap()
        .replacen(
            "[[endpoints]]",
            "[limits]\nqueue_max_bytes = 4096\n\n[[endpoints]]",
            1,
        );
    let path = dir.path().join("history.toml");
    std::fs::write(&path, src).unwrap();
    let s = BinServer::start(path.to_str().unwrap(), CONFIG);
    let mut a = open_room(&s, "big", None);
    let start = pos(&recv(&mut a));
    drop(a);
    let text = "x".repeat(190);
    let items: Vec<Value> = (0..20).map(|_| said("room:big", &text)).collect();
    publish_ok(&s, items.into());
    let mut a = open_room(&s, "big", Some(&start));
    let told = recv(&mut a);
    assert_eq!(
        (told["type"].as_str(), told["reason"].as_str()),
        (Some("reload"), Some("too_far_behind"))
    );
    assert_eq!(told["offset"], 20);
    // Five fit: recovered.
    let mut b = open_room(
        &s,
        "big",
        Some(&Pos {
            offset: 15,
            epoch: start.epoch.clone(),
        }),
    );
    for offset in 16..=20 {
        assert_eq!(recv(&mut b)["offset"], offset);
    }
    assert_eq!(recv(&mut b)["type"], "resumed");
}

/// A WebSocket whose socket has a small receive buffer, so that a reader that stops reading
/// leaves frames queued on the server soon.
fn open_small_buffer(s: &BinServer, path: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let tok = token(json!(7), json!({}));
    let req = s
        .url(&format!("{path}?token={tok}"))
        .into_client_request()
        .unwrap();
    tungstenite::client(req, stream).expect("upgrade").0
}

/// A member of a latest-value room that stops reading while updates pour in keeps one
/// unsent frame per key (the newest) instead of a queue of stale ones: it is not closed as a
/// slow consumer, as a member of a room without keys given the same traffic is, and when it
/// reads again it finds increasing offsets with jumps where values were replaced, ending with
/// the newest value of every key.
#[test]
fn a_stalled_reader_of_a_latest_value_room_gets_the_newest_value_per_key() {
    let s = server();
    let mut latest = open_small_buffer(&s, "/ws/tracking/stall/");
    let _plain = open_small_buffer(&s, "/ws/rooms/stall/");
    let keys = ["w1", "w2", "w3", "w4"];
    let mut newest: HashMap<&str, u64> = HashMap::new();
    let mut published = 0u64;
    let loc = |w: &str, n: u64| json!({"room": "track:stall", "message": {"type": "location", "worker_id": w, "lat": n, "lng": 0}});
    let mut round = |with_plain: bool| {
        let mut items = Vec::new();
        for _ in 0..100 {
            published += 1;
            let w = keys[published as usize % keys.len()];
            newest.insert(w, published);
            items.push(loc(w, published));
            if with_plain {
                items.push(said("room:stall", "a frame about as long as a location's"));
            }
        }
        publish_ok(&s, json!(items));
    };
    let slow =
        |s: &BinServer| metric_sum(&metrics(s), "beacon_slow_consumer_disconnects_total", &[]);
    // The same traffic to both rooms until the member of the room without keys overflows its
    // queue: the kernel's buffers and the queue are full by then.
    let mut rounds = 0;
    while slow(&s) < 1.0 {
        assert!(
            rounds < 3000,
            "the stalled reader of the plain room was never closed"
        );
        round(true);
        rounds += 1;
    }
    for _ in 0..20 {
        round(false);
    }
    assert_eq!(
        slow(&s),
        1.0,
        "only the plain room's reader was a slow consumer"
    );
    let conflated = metric_sum(&metrics(&s), "beacon_conflated_total", &[]);
    assert!(conflated > 0.0, "{conflated}");

    // It reads again: increasing offsets, up to the newest value of every key.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut offsets = Vec::new();
    while keys.iter().any(|k| seen.get(*k) != newest.get(k)) {
        let m = recv(&mut latest);
        assert_eq!(m["type"], "location", "{m}");
        let offset = m["offset"].as_u64().unwrap();
        assert!(
            offsets.last().is_none_or(|&o| o < offset),
            "{offset} after {offsets:?}"
        );
        offsets.push(offset);
        seen.insert(
            m["worker_id"].as_str().unwrap().to_owned(),
            m["lat"].as_u64().unwrap(),
        );
    }
    assert_eq!(
        offsets.last(),
        Some(&published),
        "the room's newest message came last"
    );
    assert!(
        (offsets.len() as u64) < published && offsets.windows(2).any(|w| w[1] > w[0] + 1),
        "replaced values show as jumps in offsets ({} of {published} received)",
        offsets.len()
    );
    assert_silent(&mut latest, 200);
}
