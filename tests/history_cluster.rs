//! Room history in Redis (`[cluster] broker = "redis"`): real `beacon serve` nodes sharing one
//! real `redis-server` (started on a free port by each test), real WebSocket clients, the
//! publish API, a `[[http]]` endpoint and sockets' broadcasts (tests/fixtures/history.toml).
//!
//! A message's position is decided once for the whole cluster, so a client resumes on any
//! node and across a node's restart with exactly what it missed, in order, then live ones;
//! history lost in Redis is `epoch_changed`; Redis down is `unavailable`, never "recovered".

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

fn protocol() -> PathBuf {
    root().join("tests/fixtures/history.toml")
}

fn node(redis: &Broker, name: &str) -> BeaconProcess {
    let n = BeaconProcess::start(
        &protocol(),
        &format!(
            "[cluster]\nbroker = \"redis\"\nurl = \"{}\"\nnode_id = \"{name}\"\n",
            redis.url()
        ),
        &[],
    );
    eventually(20, "node ready", || {
        (http(n.addr, "GET", "/readyz", &[], b"").0 == 200).then_some(())
    });
    n
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

fn say_api(addr: SocketAddr, room: &str, text: &str) {
    let (status, answer) = publish(
        addr,
        json!({"room": format!("room:{room}"), "message": {"type": "said", "text": text}}),
    );
    assert_eq!(status, 200, "{answer}");
}

fn texts(got: &[(String, Pos)]) -> Vec<&str> {
    got.iter().map(|(t, _)| t.as_str()).collect()
}

#[test]
fn a_client_resumes_on_another_node_with_exactly_what_it_missed() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let mut c = open_room(a.addr, "r1", 1, None);
    let start = recv(&mut c);
    assert_eq!(
        (start["type"].as_str(), start["offset"].as_u64()),
        (Some("resumed"), Some(0))
    );
    let epoch = pos(&start).epoch;
    let mut stayer = open_room(b.addr, "r1", 2, None);
    assert_eq!(
        pos(&recv(&mut stayer)),
        pos(&start),
        "one epoch for the cluster"
    );

    // A client that does not resume (no position parameter) is told nothing.
    let tok = token(json!(3), json!({}));
    let mut plain = connect(&format!("ws://{}/ws/rooms/r1/?token={tok}", b.addr));
    assert_eq!(recv(&mut plain)["type"], "welcome");

    // Through node A's API and a socket on node B: one sequence of positions for both.
    say_api(a.addr, "r1", "one");
    send(&mut stayer, json!({"type": "say", "text": "two"}));
    let one = raw_text(&mut c);
    assert_eq!(
        one,
        format!(r#"{{"type":"said","text":"one","offset":1,"epoch":"{epoch}"}}"#),
        "stamped as a single node stamps"
    );
    assert_eq!(raw_text(&mut stayer), one, "the same bytes on every node");
    assert_eq!(recv(&mut stayer)["text"], "two", "its own broadcast");
    assert_eq!(raw_text(&mut plain), one);
    assert_eq!(recv(&mut plain)["offset"], 2);
    let two = recv(&mut c);
    assert_eq!(
        (two["text"].as_str(), two["offset"].as_u64()),
        (Some("two"), Some(2))
    );
    let last = pos(&two);
    drop(c);

    // Missed while away: through B's API, A's API and B's `[[http]]` endpoint.
    say_api(b.addr, "r1", "three");
    say_api(a.addr, "r1", "four");
    let tok = token(json!(2), json!({}));
    let (status, body) = http(
        b.addr,
        "POST",
        "/api/rooms/r1/say",
        &[
            ("Authorization", &format!("Bearer {tok}")),
            ("Content-Type", "application/json"),
        ],
        br#"{"type":"say","text":"five"}"#,
    );
    assert_eq!(status, 200, "{body}");
    for want in ["three", "four", "five"] {
        assert_eq!(recv(&mut stayer)["text"], want);
    }

    let mut back = open_room(b.addr, "r1", 1, Some(&last));
    let (missed, answer) = catch_up(&mut back);
    assert_eq!(texts(&missed), ["three", "four", "five"]);
    let offsets: Vec<u64> = missed.iter().map(|(_, p)| p.offset).collect();
    assert_eq!(offsets, [3, 4, 5]);
    assert!(missed.iter().all(|(_, p)| p.epoch == epoch));
    assert_eq!(answer["type"], "resumed");
    assert_eq!(
        pos(&answer),
        Pos {
            offset: 5,
            epoch: epoch.clone()
        }
    );

    // Then live, from either node.
    say_api(a.addr, "r1", "six");
    let six = recv(&mut back);
    assert_eq!(
        (six["text"].as_str(), six["offset"].as_u64()),
        (Some("six"), Some(6))
    );
    assert_silent(&mut back, 300);
    // Each message entered history once for the cluster, on the node that published it.
    let appends = |addr| {
        metric_sum(
            &http(addr, "GET", "/metrics", &[], b"").1,
            "beacon_history_appends_total",
            &[],
        )
    };
    assert_eq!(appends(a.addr) + appends(b.addr), 6.0);
}

#[test]
fn a_restarted_node_still_recovers() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut c = open_room(a.addr, "r2", 1, None);
    recv(&mut c);
    say_api(a.addr, "r2", "one");
    let last = pos(&recv(&mut c));
    drop(c);
    // The node dies (SIGKILL: nothing flushed, nothing said goodbye).
    drop(a);
    say_api(b.addr, "r2", "two");
    say_api(b.addr, "r2", "three");
    let a = node(&redis, "a");
    let mut back = open_room(a.addr, "r2", 1, Some(&last));
    let (missed, answer) = catch_up(&mut back);
    assert_eq!(texts(&missed), ["two", "three"]);
    assert_eq!(answer["type"], "resumed", "{answer}");
    assert_eq!(
        pos(&answer),
        Pos {
            offset: 3,
            epoch: last.epoch.clone()
        }
    );
    say_api(a.addr, "r2", "four");
    assert_eq!(recv(&mut back)["offset"], 4);
}

#[test]
fn exactly_once_at_the_seam_under_a_publish_burst() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let nodes = [node(&redis, "a"), node(&redis, "b")];
    let addrs = [nodes[0].addr, nodes[1].addr];
    /// Reconnects made while both publishers are still publishing: they stop only after.
    const RECONNECTS: usize = 8;
    let mut c = open_room(addrs[0], "burst", 1, None);
    let mut at = pos(&recv(&mut c));
    let reconnects = Arc::new(AtomicUsize::new(0));
    // Two publishers, one per node, while the client drops and resumes on alternating nodes.
    let publishers: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let reconnects = reconnects.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while n < 100 || reconnects.load(Ordering::SeqCst) < RECONNECTS {
                    say_api(addr, "burst", &format!("{i}-{n}"));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut seen: Vec<(u64, String)> = Vec::new();
    let read_live = |c: &mut Ws, at: &mut Pos, seen: &mut Vec<(u64, String)>| {
        let v = recv(c);
        assert_eq!(v["type"], "said", "{v}");
        let p = pos(&v);
        assert_eq!(
            p,
            Pos {
                offset: at.offset + 1,
                epoch: at.epoch.clone()
            },
            "live; last seen {:?}",
            &seen[seen.len().saturating_sub(5)..]
        );
        seen.push((p.offset, v["text"].as_str().unwrap().to_owned()));
        *at = p;
    };
    while reconnects.load(Ordering::SeqCst) < RECONNECTS {
        // A few live messages (the publishers are still at it), then away and back on the
        // other node while they go on.
        for _ in 0..10 {
            read_live(&mut c, &mut at, &mut seen);
        }
        drop(c);
        let r = reconnects.load(Ordering::SeqCst) + 1;
        c = open_room(addrs[r % 2], "burst", 1, Some(&at));
        let (missed, answer) = catch_up(&mut c);
        for (text, p) in missed {
            assert_eq!(
                p,
                Pos {
                    offset: at.offset + 1,
                    epoch: at.epoch.clone()
                },
                "catch-up {r}"
            );
            seen.push((p.offset, text));
            at = p;
        }
        assert_eq!(answer["type"], "resumed", "{answer}");
        // The buffered live messages come with the catch-up; the answer says where it ends.
        assert_eq!(pos(&answer), at);
        reconnects.store(r, Ordering::SeqCst);
    }
    let counts: Vec<usize> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    let total = counts.iter().sum::<usize>() as u64;
    while at.offset < total {
        read_live(&mut c, &mut at, &mut seen);
    }
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=total).collect::<Vec<_>>());
    // Each publisher's messages arrived once, in its order.
    for (i, &count) in counts.iter().enumerate() {
        let mine: Vec<String> = seen
            .iter()
            .filter(|(_, t)| t.starts_with(&format!("{i}-")))
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(
            mine,
            (0..count).map(|n| format!("{i}-{n}")).collect::<Vec<_>>()
        );
    }
    assert_silent(&mut c, 300);
}

#[test]
fn history_lost_in_redis_is_epoch_changed_and_redis_down_is_unavailable() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let a = node(&redis, "a");
    let mut c = open_room(a.addr, "r3", 1, None);
    recv(&mut c);
    say_api(a.addr, "r3", "one");
    let last = pos(&recv(&mut c));
    drop(c);
    assert_eq!(redis.redis_cli(&["FLUSHALL"]).trim(), "OK");
    say_api(a.addr, "r3", "two");
    let mut back = open_room(a.addr, "r3", 1, Some(&last));
    let (missed, answer) = catch_up(&mut back);
    assert!(missed.is_empty(), "{missed:?}");
    assert_eq!(
        (answer["type"].as_str(), answer["reason"].as_str()),
        (Some("reload"), Some("epoch_changed"))
    );
    let fresh = pos(&answer);
    assert_ne!(fresh.epoch, last.epoch);
    assert_eq!(fresh.offset, 1, "the new history's top");
    drop(back);

    // Only the meta hash deleted (the stream stays): a new epoch, its stream starts over.
    say_api(a.addr, "r3", "three");
    let del = redis.redis_cli(&["DEL", "beacon.history.meta.room:r3"]);
    assert_eq!(del.trim(), "1", "the meta key's name");
    say_api(a.addr, "r3", "four");
    let mut back = open_room(a.addr, "r3", 1, Some(&fresh));
    let (missed, answer) = catch_up(&mut back);
    assert!(missed.is_empty(), "{missed:?}");
    assert_eq!(answer["reason"], "epoch_changed");
    let newer = pos(&answer);
    assert_eq!(newer.offset, 1);
    let mut again = open_room(
        a.addr,
        "r3",
        1,
        Some(&Pos {
            offset: 0,
            epoch: newer.epoch.clone(),
        }),
    );
    let (missed, answer) = catch_up(&mut again);
    assert_eq!(texts(&missed), ["four"]);
    assert_eq!(answer["type"], "resumed");
    drop((back, again));
    let fresh = newer;

    // Redis gone: never "recovered".
    redis.kill();
    eventually(20, "node not ready", || {
        (http(a.addr, "GET", "/readyz", &[], b"").0 == 503).then_some(())
    });
    let mut away = open_room(a.addr, "r3", 1, Some(&fresh));
    let (missed, answer) = catch_up(&mut away);
    assert!(missed.is_empty());
    assert_eq!(
        (answer["type"].as_str(), answer["reason"].as_str()),
        (Some("reload"), Some("unavailable"))
    );
    assert_eq!(pos(&answer), fresh, "the client keeps its position");
    // A broadcast that would enter history is refused, not delivered without a position.
    send(&mut away, json!({"type": "say", "text": "lost"}));
    assert_silent(&mut away, 500);
    let m = http(a.addr, "GET", "/metrics", &[], b"").1;
    assert!(
        metric_sum(
            &m,
            "beacon_broker_dropped_total",
            &["reason=\"history_refused\""]
        ) >= 1.0,
        "{m}"
    );
}

/// A live member whose node missed part of the room's history (here Redis's offset moved on
/// without a message, as it does for a node whose subscription was rebuilt while others
/// published) is closed so that it resumes, and is told what it can have; never a silent skip.
#[test]
fn members_behind_the_history_are_closed_to_resume() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    let mut on_a = open_room(a.addr, "r4", 1, None);
    let mut on_b = open_room(b.addr, "r4", 2, None);
    recv(&mut on_a);
    recv(&mut on_b);
    say_api(a.addr, "r4", "one");
    let last = pos(&recv(&mut on_a));
    assert_eq!(recv(&mut on_b)["text"], "one");
    // Offsets 2..=4 were handed out and never reached the nodes.
    let meta = "beacon.history.meta.room:r4";
    assert_eq!(redis.redis_cli(&["HINCRBY", meta, "s", "3"]).trim(), "4");
    say_api(b.addr, "r4", "five");
    for ws in [&mut on_a, &mut on_b] {
        let (code, reason) = expect_close(ws);
        assert_eq!((code, reason.as_str()), (1001, "Going away"));
    }
    let mut back = open_room(b.addr, "r4", 1, Some(&last));
    let (missed, answer) = catch_up(&mut back);
    assert!(missed.is_empty(), "never a partial recovery: {missed:?}");
    assert_eq!(
        (answer["type"].as_str(), answer["reason"].as_str()),
        (Some("reload"), Some("expired"))
    );
    assert_eq!(answer["offset"], 5);
    say_api(a.addr, "r4", "six");
    assert_eq!(recv(&mut back)["offset"], 6, "live again");
}

fn open_tracking(addr: SocketAddr, booking: &str, since: Option<Option<&Pos>>) -> Ws {
    let tok = token(json!(5), json!({}));
    let mut url = format!("ws://{addr}/ws/tracking/{booking}/?token={tok}");
    match since {
        Some(Some(p)) => url.push_str(&format!("&since={}&epoch={}", p.offset, p.epoch)),
        Some(None) => url.push_str("&since="),
        None => {}
    }
    connect(&url)
}

fn location(addr: SocketAddr, booking: &str, worker: &str, lat: u32) {
    let (status, answer) = publish(
        addr,
        json!({"room": format!("track:{booking}"),
               "message": {"type": "location", "worker_id": worker, "lat": lat, "lng": 0}}),
    );
    assert_eq!(status, 200, "{answer}");
}

/// (worker, lat, offset) of `location` messages until the catch-up's answer; the answer.
fn values(ws: &mut Ws) -> (Vec<(String, u64, u64)>, Value) {
    let mut got = Vec::new();
    loop {
        let v = recv(ws);
        match v["type"].as_str() {
            Some("location") => got.push((
                v["worker_id"].as_str().unwrap().to_owned(),
                v["lat"].as_u64().unwrap(),
                v["offset"].as_u64().unwrap(),
            )),
            Some("resumed" | "reload") => return (got, v),
            _ => panic!("unexpected {v}"),
        }
    }
}

fn loc(w: &str, lat: u64, offset: u64) -> (String, u64, u64) {
    (w.to_owned(), lat, offset)
}

/// Latest-value rooms keep their values in Redis too: a client joining on any node gets every
/// worker's newest location, a resuming one what changed since its position, across a restart.
#[test]
fn latest_values_are_shared_by_every_node() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    location(a.addr, "t1", "w1", 1);
    location(b.addr, "t1", "w2", 2);
    location(a.addr, "t1", "w1", 3);
    let mut joined = open_tracking(b.addr, "t1", Some(None));
    let (got, answer) = values(&mut joined);
    assert_eq!(got, [loc("w2", 2, 2), loc("w1", 3, 3)]);
    assert_eq!(
        (answer["type"].as_str(), answer["offset"].as_u64()),
        (Some("resumed"), Some(3))
    );
    let at = pos(&answer);
    // A client that does not resume gets the values too, and is told nothing.
    let mut plain = open_tracking(a.addr, "t1", None);
    assert_eq!(recv(&mut plain)["lat"], 2);
    assert_eq!(recv(&mut plain)["lat"], 3);
    drop(joined);

    location(b.addr, "t1", "w2", 4);
    assert_eq!(
        recv(&mut plain)["offset"],
        4,
        "live, one sequence for the cluster"
    );
    drop(a);
    location(b.addr, "t1", "w3", 5);
    let a = node(&redis, "a");
    let mut back = open_tracking(a.addr, "t1", Some(Some(&at)));
    let (got, answer) = values(&mut back);
    assert_eq!(
        got,
        [loc("w2", 4, 4), loc("w3", 5, 5)],
        "what changed since 3"
    );
    assert_eq!(answer["type"], "resumed");
    assert_eq!(
        pos(&answer).epoch,
        at.epoch,
        "the epoch survived the restart"
    );
    location(b.addr, "t1", "w1", 6);
    assert_eq!(recv(&mut back)["offset"], 6);
}
