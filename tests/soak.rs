//! Soak: a fixed population with pings and publishes; zero unexpected disconnects, flat memory
//! and descriptor counts, metrics equal to what clients see. Its own test binary, because it
//! watches this process's descriptors and memory, which parallel tests would disturb. Short in
//! CI; `BEACON_SOAK_SECS=600 cargo test --test soak` by hand.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn soak_fixed_population_no_unexpected_disconnects_and_metrics_match() {
    let secs: u64 = std::env::var("BEACON_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let e = Engine::start(include_str!("fixtures/core.toml"));
    let rooms = 5;
    let per_room = 10;
    let mut clients: Vec<(usize, Ws)> = Vec::new();
    for r in 0..rooms {
        for i in 0..per_room {
            let mut ws = connect(&e.url(&format!(
                "/ws/rooms/soak{r}/?token={}",
                member((r * 100 + i) as u64)
            )));
            recv(&mut ws);
            ws.get_mut()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            clients.push((r, ws));
        }
    }
    let sent_before = e.metric("beacon_messages_sent_total", &[]);
    // The engine runs in this process: its descriptors and memory are ours to watch.
    let fds = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let rss_kib = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let mut fds_warm = None;
    let mut rss_warm = 0;
    let start = Instant::now();
    let mut publishes = 0u64;
    let mut pongs = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        for r in 0..rooms {
            let (s, b) = publish(
                e.addr,
                json!({"room": format!("room:soak{r}"), "message": {"type": "said", "text": format!("{publishes}")}}),
            );
            assert_eq!((s, b["delivered"].as_u64()), (200, Some(per_room as u64)));
        }
        publishes += 1;
        if publishes == 5 {
            fds_warm = Some(fds());
            rss_warm = rss_kib();
        }
        for (_, ws) in clients.iter_mut() {
            send(ws, json!({"type": "ping"}));
        }
        for (_, ws) in clients.iter_mut() {
            // Each client sees its room's message and its own pong, in some order.
            let mut got = [recv(ws), recv(ws)];
            got.sort_by_key(|m| m["type"].as_str().unwrap_or_default().to_owned());
            assert_eq!(got[0]["type"], "pong");
            assert_eq!(got[1]["text"], format!("{}", publishes - 1));
            pongs += 1;
        }
    }
    let expected = publishes * (rooms * per_room) as u64 + pongs;
    // Flat after warm-up: same descriptors, and memory within a small allowance (allocator
    // slack), not growing with the number of messages.
    // HTTP publishes open and close a socket each, so a few may be mid-close at either count.
    let (now_fds, warm) = (fds(), fds_warm.unwrap_or(0));
    assert!(
        now_fds.abs_diff(warm) <= 8,
        "descriptors went from {warm} to {now_fds} during the soak"
    );
    let grown = rss_kib().saturating_sub(rss_warm);
    assert!(
        grown < 32 * 1024,
        "memory grew by {grown} KiB during the soak"
    );
    assert_eq!(
        e.metric("beacon_connections", &[]),
        (rooms * per_room) as f64
    );
    assert_eq!(
        e.metric("beacon_messages_sent_total", &[]) - sent_before,
        expected as f64
    );
    assert_eq!(
        e.metric("beacon_connections_closed_total", &[]),
        0.0,
        "no disconnects during the soak"
    );
}
