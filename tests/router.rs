//! The router's policy for a full inbox, over real sockets: a broadcast to a room whose owner
//! shard is drowning is dropped and counted, nothing else waits for it, and delivery resumes
//! once the owner catches up.

mod common;

use std::time::{Duration, Instant};

use beacon::runtime::probe::render;
use beacon::runtime::{owner_of, ShardMsg};
use common::*;
use serde_json::json;

fn protocol() -> String {
    include_str!("fixtures/core.toml")
        .replace(
            "inbound = [\"ping\", \"say\", \"shout\"]",
            "inbound = [\"ping\", \"say\", \"shout\", \"tell\"]",
        )
        .replace(
            "[messages.said]",
            "[messages.tell]\nabout = \"Say something in another room.\"\ndirection = \"client\"\n\
             fields.to = { type = \"string\", max_length = 32 }\n\
             fields.text = { type = \"string\", max_length = 200 }\n\
             broadcast = { send = \"said\", room = \"room:{in.to}\", with = { text = \"{in.text}\" } }\n\n\
             [messages.said]",
        )
}

/// A room id whose room `room:<id>` the given shard owns.
fn room_on(shard: usize) -> String {
    (0..)
        .map(|i| format!("r{i}"))
        .find(|id| owner_of(&format!("room:{id}"), 2) == shard)
        .unwrap()
}

#[test]
fn broadcast_to_a_drowning_shard_is_dropped_counted_and_delivery_resumes() {
    let e = Engine::start(&protocol());
    let (home, far) = (room_on(0), room_on(1));
    let mut listener = connect(&e.url(&format!("/ws/rooms/{far}/?token={}", member(1))));
    assert_eq!(recv(&mut listener)["type"], "welcome");
    let mut sender = connect(&e.url(&format!("/ws/rooms/{home}/?token={}", member(2))));
    assert_eq!(recv(&mut sender)["type"], "welcome");
    let tell = |ws: &mut Ws, text: &str| send(ws, json!({"type": "tell", "to": far, "text": text}));
    tell(&mut sender, "before");
    assert_eq!(recv(&mut listener)["text"], "before");

    // Shard 1 stops draining its inbox until the test lets it go, and its inbox fills up.
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let inbox = &e.shared.inboxes[1];
    assert!(inbox
        .push(ShardMsg::Run(Box::new(move || {
            let _ = started_tx.send(());
            let _ = gate.recv();
        })))
        .is_ok());
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("shard 1 runs the stall");
    let filling = Instant::now();
    while inbox.push(ShardMsg::Run(Box::new(|| {}))).is_ok() {
        assert!(
            filling.elapsed() < Duration::from_secs(10),
            "the inbox never filled"
        );
    }
    tell(&mut sender, "dropped");
    // The sender's own shard is not held up by the drowning one.
    send(&mut sender, json!({"type": "ping"}));
    assert_eq!(recv(&mut sender)["type"], "pong");
    // Read from the probes directly: a scrape could land on the stalled shard.
    eventually(10, "the drop is counted", || {
        let text = render(&e.shared.probes, false);
        (metric_sum(&text, "beacon_inbox_full_total", &["traffic=\"broadcast\""]) >= 1.0)
            .then_some(())
    });

    // Once shard 1 catches up, the next broadcast arrives, and the dropped one never does.
    release.send(()).unwrap();
    eventually(10, "the inbox drains", || {
        inbox
            .push(ShardMsg::Run(Box::new(|| {})))
            .is_ok()
            .then_some(())
    });
    tell(&mut sender, "after");
    assert_eq!(recv(&mut listener)["text"], "after");
    e.stop();
}
