//! The fan-out's end-of-turn write over real sockets: frames queued for a member in one turn
//! all arrive, in order, and a lone frame is not held back for a later event.

mod common;

use common::*;
use serde_json::json;

/// One publish of many items reaches every member in one turn: all of them arrive, in the
/// order of the list.
#[test]
fn a_burst_published_in_one_turn_arrives_whole_and_in_order() {
    let e = Engine::start(include_str!("fixtures/core.toml"));
    let mut members: Vec<Ws> = (1..=3)
        .map(|u| {
            let mut ws = connect(&e.url(&format!("/ws/rooms/burst/?token={}", member(u))));
            assert_eq!(recv(&mut ws)["type"], "welcome");
            ws
        })
        .collect();
    for round in 0..5 {
        let items: Vec<_> = (0..50)
            .map(|i| {
                json!({"room": "room:burst",
                       "message": {"type": "said", "text": format!("{round}-{i}")}})
            })
            .collect();
        let (status, body) = publish(e.addr, json!(items));
        assert_eq!(status, 200, "{body}");
        for ws in &mut members {
            for i in 0..50 {
                assert_eq!(recv(ws)["text"], format!("{round}-{i}"));
            }
        }
    }
    e.stop();
}

/// A single message with nothing after it is delivered: the end-of-turn write does not wait
/// for another event to push it out.
#[test]
fn a_lone_message_is_not_held_back() {
    let e = Engine::start(include_str!("fixtures/core.toml"));
    let mut ws = connect(&e.url(&format!("/ws/rooms/lone/?token={}", member(1))));
    assert_eq!(recv(&mut ws)["type"], "welcome");
    for i in 0..20 {
        let msg = json!({"room": "room:lone", "message": {"type": "said", "text": format!("{i}")}});
        assert_eq!(publish(e.addr, msg).0, 200);
        // Read before publishing again: nothing else happens on the shard meanwhile.
        assert_eq!(recv(&mut ws)["text"], format!("{i}"));
    }
    let mut other = connect(&e.url(&format!("/ws/rooms/lone/?token={}", member(2))));
    assert_eq!(recv(&mut other)["type"], "welcome");
    // A member's own broadcast reaches the other member with no later traffic.
    send(&mut other, json!({"type": "say", "text": "hi"}));
    assert_eq!(recv(&mut ws)["text"], "hi");
    e.stop();
}

/// `write_delay_ms`: a stream of publishes faster than the delay reaches each member in fewer
/// writes than messages, whole and in order; the first message after a quiet spell goes out
/// without waiting for the delay's tick.
#[test]
fn a_write_delay_joins_a_stream_into_fewer_writes() {
    let e = Engine::start_with(include_str!("fixtures/core.toml"), 1, |c| {
        c.write_delay_ms = 1000
    });
    let mut members: Vec<Ws> = (1..=3)
        .map(|u| {
            let mut ws = connect(&e.url(&format!("/ws/rooms/slowly/?token={}", member(u))));
            assert_eq!(recv(&mut ws)["type"], "welcome");
            ws
        })
        .collect();
    let said =
        |text: &str| json!({"room": "room:slowly", "message": {"type": "said", "text": text}});
    let writes = |e: &Engine| e.metric("beacon_fanout_writes_total", &[]);
    let before = writes(&e);
    assert_eq!(publish(e.addr, said("first")).0, 200);
    for ws in &mut members {
        assert_eq!(recv(ws)["text"], "first");
    }
    // Five publishes, one HTTP call each, well inside the second after the first's write.
    for i in 0..5 {
        assert_eq!(publish(e.addr, said(&format!("{i}"))).0, 200);
    }
    for ws in &mut members {
        for i in 0..5 {
            assert_eq!(recv(ws)["text"], format!("{i}"));
        }
    }
    let used = writes(&e) - before;
    assert!(
        used < 3.0 * 6.0,
        "{used} writes for 6 messages to 3 members: the delay joined none"
    );
    e.stop();
}
