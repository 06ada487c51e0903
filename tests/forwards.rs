//! Forwarded client messages against a misbehaving backend (a stand-in HTTP server), on the
//! real binary serving config/protocols/umemployed.toml: a backend that holds a message does
//! not hold up other sockets or the sender's other messages, order is kept, and refusals,
//! failures, garbage, timeouts and full queues reach the sender as declared and are counted.
//! tests/django_backend.rs runs the same protocol against the real example backend.

mod apps_support;
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use apps_support::{Backend, Binary};
use common::*;
use serde_json::{json, Value};

/// Holds back the backend's answers to "hang" messages until opened.
#[derive(Default)]
struct Gate(Mutex<bool>, Condvar);

impl Gate {
    fn wait(&self) {
        let open = self.0.lock().unwrap();
        let _ = self
            .1
            .wait_timeout_while(open, Duration::from_secs(30), |open| !*open)
            .unwrap();
    }

    fn open(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
}

/// Conversation 5 has participants 1, 2 and 3. Chat messages are answered by their text.
fn backend(gate: Arc<Gate>) -> Backend {
    let next = AtomicU64::new(1);
    Backend::start(move |path, req| {
        if path == "/internal/beacon/authorize/" {
            let ok = req["path"]["conversation_id"] == "5"
                && [1, 2, 3].contains(&req["user_id"].as_i64().unwrap_or(0));
            return (200, json!({ "allow": ok }).to_string());
        }
        assert_eq!(path, "/internal/beacon/chat/message/");
        let text = req["message"]["message"].as_str().unwrap_or("").to_owned();
        match text.as_str() {
            "refuse" => {
                return (
                    403,
                    r#"{"error": "muted", "message": "you are muted here"}"#.into(),
                )
            }
            "fail" => return (503, "{}".into()),
            "garbage" => return (200, "oops".into()),
            "misfit" => return (200, r#"{"broadcast": {"message": "not an object"}}"#.into()),
            t if t.starts_with("hang") => gate.wait(),
            _ => {}
        }
        let id = next.fetch_add(1, Ordering::SeqCst);
        let answer = json!({"broadcast": {"message": {
            "id": id, "content": text, "sender": {"id": req["user_id"]}}}});
        (200, answer.to_string())
    })
}

/// umemployed.toml with every forward's timeout set to `timeout_ms`, written to `dir`.
fn protocol(dir: &TempDir, timeout_ms: u64) -> String {
    let src = std::fs::read_to_string(root().join("config/protocols/umemployed.toml"))
        .unwrap()
        .replace("timeout_ms = 3000", &format!("timeout_ms = {timeout_ms}"));
    let path = dir.path().join("umemployed.toml");
    std::fs::write(&path, src).unwrap();
    path.to_string_lossy().into_owned()
}

fn join(b: &Binary, user: i64) -> Ws {
    let t = token(json!(user), json!({}));
    connect(&b.url(&format!("/ws/chat/5/?token={t}")))
}

fn chat(ws: &mut Ws, text: &str) {
    send(ws, json!({"type": "chat_message", "message": text}));
}

/// The next chat message's text, skipping presence.
fn next_chat(ws: &mut Ws) -> Value {
    loop {
        let m = recv(ws);
        if m["type"] != "user_status" {
            return m;
        }
    }
}

fn forwards(b: &Binary, result: &str) -> f64 {
    metric_sum(
        &b.metrics(),
        "beacon_forwards_total",
        &[&format!("result=\"{result}\"")],
    )
}

#[test]
fn a_held_message_holds_up_nothing_else_and_order_is_kept() {
    let dir = TempDir::new("forwards");
    let gate = Arc::new(Gate::default());
    let be = backend(gate.clone());
    let b = Binary::start(&protocol(&dir, 20_000), &be.url());
    let mut a = join(&b, 1);
    let mut c = join(&b, 2);

    // The backend holds a's first message; a's next messages queue behind it.
    chat(&mut a, "hang");
    chat(&mut a, "second");
    for i in 0..14 {
        chat(&mut a, &format!("queued {i}"));
    }
    // 16 unanswered (1 being sent, 15 waiting): the 17th is refused at once, as declared, and
    // counted.
    chat(&mut a, "one too many");
    let e = next_chat(&mut a);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("backend_unavailable")),
        "{e}"
    );
    // Meanwhile a's typing is relayed at once, and c's messages are stored and delivered.
    send(
        &mut a,
        json!({"type": "typing_indicator", "is_typing": true}),
    );
    assert_eq!(next_chat(&mut c)["type"], "typing_indicator");
    chat(&mut c, "from c");
    for ws in [&mut a, &mut c] {
        assert_eq!(next_chat(ws)["message"]["content"], "from c");
    }
    assert_eq!(forwards(&b, "overloaded"), 1.0);

    // Released: a's messages reach the room in the order a sent them.
    gate.open();
    let mut want = vec!["hang".to_owned(), "second".to_owned()];
    want.extend((0..14).map(|i| format!("queued {i}")));
    for ws in [&mut a, &mut c] {
        let got: Vec<String> = (0..want.len())
            .map(|_| {
                next_chat(ws)["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(forwards(&b, "accepted"), 17.0);
}

#[test]
fn refusals_failures_and_timeouts_reach_the_sender_as_declared() {
    let dir = TempDir::new("forwards");
    let gate = Arc::new(Gate::default());
    let be = backend(gate.clone());
    // Short timeouts: a held message times out (twice: one retry is declared).
    let b = Binary::start(&protocol(&dir, 200), &be.url());
    let mut a = join(&b, 1);
    let mut c = join(&b, 2);

    chat(&mut a, "refuse");
    let e = next_chat(&mut a);
    assert_eq!(
        e,
        json!({"type": "error", "code": "muted", "message": "you are muted here"})
    );
    for (text, retried) in [
        ("fail", 1.0),
        ("garbage", 0.0),
        ("misfit", 0.0),
        ("hang", 1.0),
    ] {
        let retries = metric_sum(&b.metrics(), "beacon_forward_retries_total", &[]);
        chat(&mut a, text);
        let e = next_chat(&mut a);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("backend_unavailable")),
            "{text}: {e}"
        );
        let now = metric_sum(&b.metrics(), "beacon_forward_retries_total", &[]);
        assert_eq!(now - retries, retried, "{text}");
    }
    assert_eq!(
        (forwards(&b, "refused"), forwards(&b, "unavailable")),
        (1.0, 4.0)
    );
    // Nothing of it reached the room, and the socket is still open and served.
    chat(&mut a, "fine");
    for ws in [&mut a, &mut c] {
        assert_eq!(next_chat(ws)["message"]["content"], "fine");
    }
    gate.open();

    // The backend goes away: the next message is unavailable, the socket stays.
    drop(be);
    chat(&mut c, "anyone?");
    assert_eq!(next_chat(&mut c)["code"], "backend_unavailable");
    assert_eq!(forwards(&b, "unavailable"), 5.0);
    send(
        &mut c,
        json!({"type": "typing_indicator", "is_typing": false}),
    );
    assert_eq!(next_chat(&mut a)["type"], "typing_indicator");
}

/// A sender that leaves before the backend answers: its stored message still reaches the
/// room, and what was addressed to it alone (here the refusal of its next message) is not
/// sent and is counted in `beacon_forward_sender_gone_total`.
#[test]
fn a_sender_that_left_still_reaches_the_room_and_its_lost_notices_are_counted() {
    let dir = TempDir::new("forwards");
    let gate = Arc::new(Gate::default());
    let be = backend(gate.clone());
    let b = Binary::start(&protocol(&dir, 20_000), &be.url());
    let mut a = join(&b, 1);
    let mut c = join(&b, 2);
    chat(&mut c, "c is in");
    assert_eq!(next_chat(&mut c)["message"]["content"], "c is in");
    chat(&mut a, "hang on");
    chat(&mut a, "refuse");
    // Both are with Beacon (the first held by the backend) before a leaves.
    assert_eq!(next_chat(&mut a)["message"]["content"], "c is in");
    eventually(20, "the held message to reach the backend", || {
        be.requests
            .lock()
            .unwrap()
            .iter()
            .any(|(_, r)| r["message"]["message"] == "hang on")
            .then_some(())
    });
    drop(a);
    let gone = || metric_sum(&b.metrics(), "beacon_forward_sender_gone_total", &[]);
    assert_eq!(gone(), 0.0);
    // Wait until a's socket is closed on its shard before the backend answers.
    eventually(20, "a's socket to close", || {
        (metric_sum(&b.metrics(), "beacon_connections_closed_total", &[]) >= 1.0).then_some(())
    });
    gate.open();
    assert_eq!(next_chat(&mut c)["message"]["content"], "hang on");
    eventually(20, "the refusal to be answered", || {
        (forwards(&b, "refused") == 1.0).then_some(())
    });
    assert_eq!(gone(), 1.0);
}
