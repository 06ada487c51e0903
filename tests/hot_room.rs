//! A room spread over both shards (`spread_rooms_at = 1`: every room whose sockets need
//! nothing of the owner's state at join): sockets stay on the shard that accepted them, the
//! room's owner sequences every message, and every member, on either shard, sees the room's
//! one order. Not timed: each test waits for what it checks.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn spread_engine() -> Engine {
    Engine::start_with(include_str!("fixtures/core.toml"), 2, |c| {
        c.spread_rooms_at = 1
    })
}

/// `n` members of `room`, welcomed, with the sockets on both shards.
fn members(e: &Engine, room: &str, n: u64, first_uid: u64) -> Vec<Ws> {
    let ws: Vec<Ws> = (first_uid..first_uid + n)
        .map(|u| {
            let mut ws = connect(&e.url(&format!("/ws/rooms/{room}/?token={}", member(u))));
            assert_eq!(recv(&mut ws)["type"], "welcome");
            ws
        })
        .collect();
    ws
}

/// Open connections per shard.
fn per_shard(e: &Engine) -> (f64, f64) {
    (
        e.metric("beacon_connections", &["shard=\"0\""]),
        e.metric("beacon_connections", &["shard=\"1\""]),
    )
}

/// Members of `room`, connected until each shard holds at least `each` of them: the kernel
/// picks the shard, so a fixed count could land on one shard now and then.
fn members_on_both(e: &Engine, room: &str, each: usize, first_uid: u64) -> Vec<Ws> {
    let (base0, base1) = per_shard(e);
    let mut out = Vec::new();
    for uid in first_uid.. {
        let (s0, s1) = per_shard(e);
        if (s0 - base0) as usize >= each && (s1 - base1) as usize >= each {
            break;
        }
        assert!(out.len() < 40 * each, "accepts never reached both shards");
        out.extend(members(e, room, 1, uid));
    }
    out
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two socket publishers and a burst of HTTP publishes into one spread room at once: every
/// member, on either shard, receives every message, in one order shared by all members, and
/// each publisher's messages in the order it sent them.
#[test]
fn every_member_of_a_spread_room_sees_one_order() {
    let e = spread_engine();
    let mut subs = members_on_both(&e, "hot", 6, 1);
    assert!(
        e.metric("beacon_spread_members", &[]) > 0.0,
        "members off the owner"
    );
    let mut pubs = members(&e, "hot", 2, 100);
    // Nobody reads until everything is sent, so what a member is owed must fit in its socket's
    // buffers (~64 KiB on loopback): more would make it a slow consumer, rightly.
    const N: usize = 60;
    let http = {
        let addr = e.addr;
        std::thread::spawn(move || {
            for round in 0..5 {
                let items: Vec<_> = (0..N / 5)
                    .map(|i| {
                        json!({"room": "room:hot",
                               "message": {"type": "said", "text": format!("h-{}", round * (N / 5) + i)}})
                    })
                    .collect();
                let (status, body) = publish(addr, json!(items));
                assert_eq!(status, 200, "{body}");
            }
        })
    };
    for i in 0..N {
        for (p, ws) in pubs.iter_mut().enumerate() {
            send(ws, json!({"type": "say", "text": format!("p{p}-{i}")}));
        }
    }
    http.join().unwrap();
    let total = 3 * N;
    let read_all = |ws: &mut Ws| -> Vec<String> {
        (0..total)
            .map(|_| {
                let v = recv(ws);
                assert_eq!(v["type"], "said", "{v}");
                v["text"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let first = read_all(&mut subs[0]);
    for ws in subs.iter_mut().skip(1).chain(pubs.iter_mut()) {
        assert_eq!(read_all(ws), first, "one order for every member");
    }
    // Each publisher's own order holds within the room's order.
    for prefix in ["p0-", "p1-", "h-"] {
        let seq: Vec<usize> = first
            .iter()
            .filter_map(|t| t.strip_prefix(prefix))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(seq, (0..N).collect::<Vec<_>>(), "{prefix} in order");
    }
    e.stop();
}

/// A single publish reaches every member on both shards with nothing after it: neither the
/// owner's hand-over nor the member shard's end-of-turn write waits for a later event.
#[test]
fn a_lone_message_reaches_every_spread_member() {
    let e = spread_engine();
    let mut subs = members_on_both(&e, "lone", 4, 1);
    let n = subs.len();
    for i in 0..10 {
        let msg = json!({"room": "room:lone", "message": {"type": "said", "text": format!("{i}")}});
        let (status, body) = publish(e.addr, msg);
        assert_eq!(status, 200);
        assert_eq!(body["delivered"], n, "{body}");
        for ws in subs.iter_mut() {
            assert_eq!(recv(ws)["text"], format!("{i}"));
        }
    }
    // A member's own broadcast, from whichever shard it is on, reaches the others (and, with
    // `exclude_sender`, not itself).
    send(&mut subs[3], json!({"type": "shout", "text": "hi"}));
    for (i, ws) in subs.iter_mut().enumerate() {
        if i == 3 {
            assert_silent(ws, 300);
        } else {
            assert_eq!(recv(ws)["text"], "hi");
        }
    }
    e.stop();
}

/// Members that stop reading are closed with the declared slow-consumer code on whichever
/// shard they live, while members that read get everything.
#[test]
fn slow_spread_members_are_closed_with_their_code() {
    let e = spread_engine();
    let slow = members_on_both(&e, "crowd", 2, 1);
    let n_slow = slow.len() as f64;
    let mut fast = members(&e, "crowd", 4, 1000);
    let text = "y".repeat(1000);
    let mut rounds = 0u64;
    let cut = |e: &Engine| e.metric("beacon_connections_closed_total", &["code=\"4008\""]);
    while cut(&e) < n_slow {
        assert!(rounds < 20_000, "slow members never cut");
        let items: Vec<_> = (0..20)
            .map(|_| json!({"room": "room:crowd", "message": {"type": "said", "text": text}}))
            .collect();
        assert_eq!(publish(e.addr, json!(items)).0, 200);
        for ws in fast.iter_mut() {
            for _ in 0..20 {
                assert_eq!(recv(ws)["type"], "said");
            }
        }
        rounds += 1;
    }
    let by_shard: HashMap<&str, f64> = ["0", "1"]
        .into_iter()
        .map(|s| {
            let shard = format!("shard=\"{s}\"");
            let n = e.metric(
                "beacon_connections_closed_total",
                &["code=\"4008\"", &shard],
            );
            (s, n)
        })
        .collect();
    assert!(
        by_shard.values().all(|n| *n > 0.0),
        "slow members cut on both shards: {by_shard:?}"
    );
    drop(slow);
    assert_eq!(e.metric("beacon_connections", &[]), 4.0);
    e.stop();
}

/// The owner counts spread members in and out: when they leave, the count goes back to zero
/// and a new member still gets the room's messages.
#[test]
fn spread_members_are_counted_out_when_they_leave() {
    let e = spread_engine();
    let subs = members_on_both(&e, "churn", 2, 1);
    wait_for("spread members counted", || {
        e.metric("beacon_spread_members", &[]) > 0.0
    });
    drop(subs);
    wait_for("spread members counted out", || {
        e.metric("beacon_spread_members", &[]) == 0.0 && e.metric("beacon_connections", &[]) == 0.0
    });
    let mut again = members(&e, "churn", 8, 50);
    let msg = json!({"room": "room:churn", "message": {"type": "said", "text": "back"}});
    let (_, body) = publish(e.addr, msg);
    assert_eq!(body["delivered"], 8, "{body}");
    for ws in again.iter_mut() {
        let v: Value = recv(ws);
        assert_eq!(v["text"], "back");
    }
    e.stop();
}
