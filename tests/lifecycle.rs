//! Connection lifecycle over real sockets: slow consumers, server pings and the idle timeout,
//! token expiry and in-band refresh on an open socket, SIGTERM drain of the real binary.
//!
//! The deadlines themselves (ping cadence, idle, expiry, refresh, close grace) are unit-tested
//! with made-up instants in `engine/src/lifecycle.rs`; these tests check that the connection
//! task arms its timer by them, on both of its paths.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn slow_consumer_is_closed_while_fast_members_keep_receiving() {
    let e = Engine::start(include_str!("fixtures/core.toml"));
    let mut slow = connect(&e.url(&format!("/ws/rooms/busy/?token={}", member(1))));
    recv(&mut slow);
    let mut fast = connect(&e.url(&format!("/ws/rooms/busy/?token={}", member(2))));
    recv(&mut fast);
    // The slow client never reads. Each batch is 40 frames of ~1 KiB, well within the 64 KiB
    // per-connection queue, so a reader keeps up; kernel buffers absorb a few MiB for the slow
    // one, then its queue overflows.
    let text = "x".repeat(1000);
    let items: Vec<_> = (0..40)
        .map(|_| json!({"room": "room:busy", "message": {"type": "said", "text": text}}))
        .collect();
    let mut batches = 0;
    while e.metric("beacon_connections_closed_total", &["code=\"4008\""]) < 1.0 {
        assert!(batches < 5000, "slow consumer never detected");
        let (s, _) = publish(e.addr, json!(items));
        assert_eq!(s, 200);
        batches += 1;
        for _ in 0..40 {
            assert_eq!(recv(&mut fast)["type"], "said");
        }
    }
    assert!(e.metric("beacon_queue_drops_total", &[]) >= 1.0);
    // The fast member is unaffected.
    send(&mut fast, json!({"type": "ping"}));
    assert_eq!(recv(&mut fast), json!({"type": "pong"}));
    // The slow one, when it finally reads, finds the end of its stream.
    slow.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut frames = 0;
    loop {
        match slow.read() {
            Ok(tungstenite::Message::Close(f)) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(4008));
                break;
            }
            Ok(_) => frames += 1,
            Err(_) => break, // cut after the close grace period
        }
    }
    assert!(frames > 0);
}

#[test]
fn silent_peer_is_closed_at_idle_timeout_and_answering_peer_stays() {
    let src = include_str!("fixtures/core.toml")
        .replace("idle_timeout_ms = 60000", "idle_timeout_ms = 1000")
        .replace("ping_interval_ms = 20000", "ping_interval_ms = 200");
    let e = Engine::start(&src);
    let mut silent = connect(&e.url(&format!("/ws/rooms/idle/?token={}", member(1))));
    let mut alive = connect(&e.url(&format!("/ws/rooms/idle/?token={}", member(2))));
    recv(&mut alive);
    // `alive` reads, so tungstenite answers the server's pings; `silent` does not read at all.
    let start = Instant::now();
    let mut pings = 0;
    alive
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while start.elapsed() < Duration::from_millis(2500) {
        match alive.read() {
            Ok(tungstenite::Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("alive socket closed: {e}"),
        }
    }
    assert!(pings >= 3, "server pings every 200 ms, saw {pings}");
    silent
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (code, reason) = expect_close(&mut silent);
    assert_eq!((code, reason.as_str()), (1001, "Going away"));
}

fn expiring_token(uid: u64, exp: u64) -> String {
    token_with(
        SECRET,
        jsonwebtoken::Algorithm::HS256,
        json!(uid),
        json!({"role": "member"}),
        exp,
    )
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Pings 20 s apart: the close comes from the token's own deadline, not from a ping tick. The
/// bound is loose for a busy CI box; a close at the first tick, 20 s in, would miss it by 13 s
/// or more.
#[test]
fn token_expiry_closes_at_exp_and_a_refreshed_socket_stays_open() {
    let e = Engine::start(include_str!("fixtures/core.toml"));
    let exp = now() + 2;
    let mut stays = connect(&e.url(&format!("/ws/rooms/r/?token={}", expiring_token(5, exp))));
    recv(&mut stays);
    send(
        &mut stays,
        json!({"type": "refresh_token", "token": member(5)}),
    );
    let mut expires = connect(&e.url(&format!("/ws/rooms/r/?token={}", expiring_token(6, exp))));
    recv(&mut expires);
    expires
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let (code, _) = expect_close(&mut expires);
    let at = unix_ms();
    assert_eq!(code, 4002);
    assert!(
        at < (exp + 5) * 1000,
        "closed {} ms after exp",
        at - exp * 1000
    );
    // The engine reads the same wall clock; the margin is for the moment between its monotonic
    // and wall-clock readings.
    assert!(
        at + 50 >= exp * 1000,
        "closed {} ms before exp",
        exp * 1000 - at
    );
    // Past the first token's expiry the refreshed socket still works.
    send(&mut stays, json!({"type": "ping"}));
    assert_eq!(recv(&mut stays), json!({"type": "pong"}));
    // A token for another user is refused and closes the socket.
    send(
        &mut stays,
        json!({"type": "refresh_token", "token": member(6)}),
    );
    assert_eq!(expect_close(&mut stays).0, 4001);
}

/// A socket that never goes quiet is run by the shard's readiness loop, not its own task; its
/// timers (pings, token expiry) must still fire.
#[test]
fn token_expiring_on_a_busy_socket_closes_it() {
    let src = include_str!("fixtures/core.toml")
        .replace("ping_interval_ms = 20000", "ping_interval_ms = 200");
    let e = Engine::start(&src);
    let tok = expiring_token(6, now() + 2);
    let mut ws = connect(&e.url(&format!("/ws/rooms/busy-exp/?token={tok}")));
    recv(&mut ws);
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let (mut pongs, mut pings) = (0, 0);
    let code = loop {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "no close after the token expired"
        );
        if ws
            .send(tungstenite::Message::text(r#"{"type":"ping"}"#))
            .is_err()
        {
            break expect_close(&mut ws).0;
        }
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) if t.contains("pong") => pongs += 1,
            Ok(tungstenite::Message::Ping(_)) => pings += 1,
            Ok(tungstenite::Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => {}
            Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("closed without a close frame: {e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(code, 4002);
    assert!(pongs > 20, "the socket was kept busy ({pongs} pongs)");
    assert!(pings >= 3, "server pings every 200 ms, saw {pings}");
}

/// The server closes on a protocol error met while the readiness loop runs the socket; a peer
/// that then never answers the close is released once the close grace period ends.
#[test]
fn peer_that_never_answers_our_close_is_released() {
    use std::io::Write;
    let e = Engine::start(include_str!("fixtures/core.toml"));
    let mut ws = connect(&e.url(&format!("/ws/rooms/mute/?token={}", member(7))));
    recv(&mut ws);
    assert_eq!(e.metric("beacon_connections", &[]), 1.0);
    // An unmasked client frame: 1002. The client reads nothing from here on.
    ws.get_mut().write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    e.wait_all_closed(
        Duration::from_secs(8),
        "the closing socket was never released",
    );
    assert!(e.metric("beacon_connections_closed_total", &["code=\"1002\""]) >= 1.0);
}

#[test]
fn sigterm_drains_with_going_away_and_exits_zero() {
    let server = BinServer::start(
        "tests/fixtures/core.toml",
        "tests/fixtures/config_drain.toml",
    );
    let mut clients: Vec<_> = (0..6)
        .map(|i| {
            let mut ws = connect(&server.url(&format!("/ws/rooms/d{i}/?token={}", member(i))));
            recv(&mut ws);
            ws
        })
        .collect();
    assert_eq!(http(server.addr, "GET", "/readyz", &[], b"").0, 200);
    server.signal("TERM");
    // Readiness flips while sockets are still being drained (1.5 s window).
    let mut saw_not_ready = false;
    for _ in 0..50 {
        match std::net::TcpStream::connect(server.addr) {
            Ok(_) => {
                // The listener may already be closed on the shard that got the connection.
                let (s, _) = http(server.addr, "GET", "/readyz", &[], b"");
                if s == 503 || s == 0 {
                    saw_not_ready = true;
                    break;
                }
            }
            Err(_) => {
                saw_not_ready = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(saw_not_ready, "readiness must flip when draining");
    for ws in clients.iter_mut() {
        assert_eq!(expect_close(ws), (1001, "Going away".to_owned()));
    }
    assert_eq!(server.wait(), 0);
}
