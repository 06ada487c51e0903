//! Operations: per-IP caps and X-Forwarded-For trust (in-process engine, clients on several
//! loopback addresses), and the real binary's readiness, drain and logs under SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::IpAddr;

use common::*;
use serde_json::json;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn booking_path(id: &str, uid: u64) -> String {
    format!(
        "/ws/bookings/{id}/?token={}",
        token(json!(uid), json!({"is_staff": true}))
    )
}

fn default_src() -> String {
    std::fs::read_to_string(root().join("protocol.toml")).unwrap()
}

#[test]
fn per_ip_cap_holds_across_shards_and_answers_429() {
    let e = Engine::start_with(&default_src(), 2, |c| c.max_connections_per_ip = 3);
    let a = ip("127.0.0.2");
    // Different rooms land on different owner shards; the cap is per client, not per shard.
    let mut held: Vec<Ws> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| ws_from(a, e.addr, &booking_path(b, 1), &[]).expect("under the cap"))
        .collect();
    assert_eq!(
        ws_from(a, e.addr, &booking_path("b4", 1), &[]).err(),
        Some(429)
    );
    // Another client is unaffected.
    let other = ws_from(ip("127.0.0.3"), e.addr, &booking_path("b4", 2), &[]);
    assert!(other.is_ok());
    assert!(e.metric("beacon_handshakes_rejected_total", &["reason=\"ip_limit\""]) >= 1.0);
    // Closing one gives its place back (the slot is released when the task ends).
    let mut gone = held.pop().unwrap();
    gone.close(None).unwrap();
    let _ = expect_close_or_eof(&mut gone);
    eventually(10, "slot released", || {
        ws_from(a, e.addr, &booking_path("b5", 1), &[]).ok()
    });
}

fn expect_close_or_eof(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let e = Engine::start_with(&default_src(), 2, |c| {
        c.max_connections_per_ip = 1;
        c.trusted_proxies = vec![beacon::runtime::client_ip::Cidr::parse("127.0.0.1/32").unwrap()];
    });
    let proxy = ip("127.0.0.1");
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    // Through the trusted proxy, each forwarded client has its own cap.
    let _c1 = ws_from(proxy, e.addr, &booking_path("x1", 1), &xff("198.51.100.7")).unwrap();
    let _c2 = ws_from(proxy, e.addr, &booking_path("x2", 2), &xff("198.51.100.8")).unwrap();
    // A forged left-most entry does not help: the right-most untrusted hop is the client.
    assert_eq!(
        ws_from(
            proxy,
            e.addr,
            &booking_path("x3", 1),
            &xff("203.0.113.1, 198.51.100.7")
        )
        .err(),
        Some(429)
    );
    // From an untrusted peer the header is ignored: the peer itself is the client.
    let untrusted = ip("127.0.0.2");
    let _u = ws_from(
        untrusted,
        e.addr,
        &booking_path("y1", 3),
        &xff("198.51.100.9"),
    )
    .unwrap();
    assert_eq!(
        ws_from(
            untrusted,
            e.addr,
            &booking_path("y2", 3),
            &xff("198.51.100.10")
        )
        .err(),
        Some(429)
    );
}

const CONFIG: &str = r#"
drain_ms = 1000
[keys.jwt]
secret_env = "BEACON_JWT_SECRET"
"#;

/// GET on an already open keep-alive connection; returns the status.
fn get_keepalive(s: &mut std::net::TcpStream, path: &str) -> u16 {
    write!(s, "GET {path} HTTP/1.1\r\nHost: beacon\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

#[test]
fn sigterm_flips_readiness_and_drains_with_going_away() {
    let b = BeaconProcess::start(&root().join("protocol.toml"), CONFIG, &[]);
    let mut probe = std::net::TcpStream::connect(b.addr).unwrap();
    probe
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert_eq!(get_keepalive(&mut probe, "/readyz"), 200);
    let mut sockets: Vec<Ws> = (0..6)
        .map(|i| {
            connect(&format!(
                "ws://{}{}",
                b.addr,
                booking_path(&format!("d{i}"), i)
            ))
        })
        .collect();
    for ws in &mut sockets {
        assert_eq!(recv(ws)["type"], "connection_established");
    }
    signal(b.child.id(), "TERM");
    for ws in &mut sockets {
        assert_eq!(expect_close(ws).0, 1001);
    }
    // The keep-alive probe connection is still open: it now reads not-ready.
    assert_eq!(get_keepalive(&mut probe, "/readyz"), 503);
    let st = b.terminate();
    assert!(st.success(), "clean exit after drain: {st:?}");
}

#[test]
fn json_logs_show_client_addresses_never_tokens_or_bodies() {
    let b = BeaconProcess::start(
        &root().join("protocol.toml"),
        CONFIG,
        &["--log-json", "--log-level", "debug"],
    );
    let tok = token(json!(42), json!({}));
    let mut ws = ws_from(
        ip("127.0.0.5"),
        b.addr,
        &format!("/ws/notifications/?token={tok}"),
        &[],
    )
    .unwrap();
    let marker = "very-private-message-body-7f3a";
    let (status, _) = publish(
        b.addr,
        json!({"room": "user:42", "message": {"type": "notification", "title": "t", "message": marker}}),
    );
    assert_eq!(status, 200);
    assert_eq!(recv(&mut ws)["message"], marker);
    ws.close(None).unwrap();
    let logs = b.wait_log("\"closed\"");
    let mut admitted = false;
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        if v["fields"]["message"] == "admitted" {
            assert_eq!(v["fields"]["client"], "127.0.0.5");
            admitted = true;
        }
    }
    assert!(admitted, "no admission line at debug:\n{logs}");
    assert!(!logs.contains(&tok), "token in logs");
    assert!(!logs.contains("token="), "query string in logs");
    assert!(!logs.contains(marker), "message body in logs");

    // Without the flag the logs are for people, not JSON.
    let plain = BeaconProcess::start(&root().join("protocol.toml"), CONFIG, &[]);
    let text = plain.wait_log("listening");
    assert!(!text.trim_start().starts_with('{'), "{text}");
}
