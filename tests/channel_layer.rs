//! An unchanged Django backend's `group_send` reaching Beacon's sockets (`[channel_layer]`),
//! with the real `channels` and `channels_redis` packages (the example backend's venv) and a
//! real `redis-server`, for both of channels_redis' layers:
//! - Beacon joins the group a room maps to while the room has members, and leaves it after;
//! - an event of a mapped type arrives as the declared server message, in the room only;
//! - an unmapped event type and an event that does not make a valid message are counted in
//!   `beacon_channel_layer_events_total`, never delivered.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

const LAYER: &str = r#"
[channel_layer]
about = "HunarMitra's consumers: one group per booking."
groups = [{ group = "booking_{id}", room = "booking:{id}" }]
events."booking.status" = { send = "booking_status" }
"#;

/// The example backend's Python, with channels and channels_redis (scripts/test.sh makes it).
fn django_python() -> Option<PathBuf> {
    require_program(
        "the example backend's venv",
        &[root()
            .join("examples/django/.venv/bin/python")
            .to_str()
            .unwrap()],
    )
}

/// `async_to_sync(get_channel_layer().group_send)(group, event)`, as a Django backend calls it.
fn group_send(python: &PathBuf, backend: &str, port: u16, group: &str, event: &Value) {
    let script = format!(
        r#"
import json, django
from django.conf import settings
settings.configure(CHANNEL_LAYERS={{"default": {{"BACKEND": "{backend}",
    "CONFIG": {{"hosts": [("127.0.0.1", {port})]}}}}}})
django.setup()
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
async_to_sync(get_channel_layer().group_send)({group:?}, json.loads({event:?}))
"#,
        event = event.to_string(),
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "group_send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(layer: &str, backend: &str) {
    let (Some(redis), Some(python)) = (Broker::start(Kind::Redis, free_port()), django_python())
    else {
        return;
    };
    let dir = TempDir::new("channel-layer");
    let proto = dir.path().join("protocol.toml");
    let src = std::fs::read_to_string(root().join("protocol.toml")).unwrap();
    std::fs::write(&proto, format!("{src}{LAYER}")).unwrap();
    let config = format!(
        "[keys.jwt]\nsecret_env = \"BEACON_JWT_SECRET\"\n\n[channel_layer]\nurl = \"redis://127.0.0.1:{}\"\nlayer = \"{layer}\"\nclient = \"t1\"\n",
        redis.port
    );
    let beacon = BeaconProcess::start(&proto, &config, &[]);
    let joined = || match layer {
        "core" => redis
            .redis_cli(&["ZRANGE", "asgi:group:booking_42", "0", "-1"])
            .contains("specific.beacon.t1."),
        _ => redis
            .redis_cli(&["PUBSUB", "NUMSUB", "asgi__group__booking_42"])
            .lines()
            .nth(1)
            .is_some_and(|n| n.trim() != "0"),
    };

    let admin = token(json!(1), json!({"role": "admin"}));
    let mut ws = connect(&format!(
        "ws://{}/ws/bookings/42/?token={admin}",
        beacon.addr
    ));
    let mut other = connect(&format!(
        "ws://{}/ws/bookings/43/?token={admin}",
        beacon.addr
    ));
    for s in [&mut ws, &mut other] {
        assert_eq!(recv(s)["type"], "connection_established");
    }
    eventually(20, "Beacon to join the booking's group", || {
        joined().then_some(())
    });

    let status = json!({"type": "booking.status", "booking_id": "42", "status": "arrived",
                        "actor": "Ravi"});
    group_send(&python, backend, redis.port, "booking_42", &status);
    let got = recv(&mut ws);
    assert_eq!(
        (
            &got["type"],
            &got["booking_id"],
            &got["status"],
            &got["actor"]
        ),
        (
            &json!("booking_status"),
            &json!("42"),
            &json!("arrived"),
            &json!("Ravi")
        ),
        "{got}"
    );
    // Not mapped, and not a valid booking_status: counted, never delivered.
    group_send(
        &python,
        backend,
        redis.port,
        "booking_42",
        &json!({"type": "chat.message", "text": "hi"}),
    );
    group_send(
        &python,
        backend,
        redis.port,
        "booking_42",
        &json!({"type": "booking.status", "booking_id": "42", "status": "teleported"}),
    );
    let count = |result: &str| {
        let text = http(beacon.addr, "GET", "/metrics", &[], b"").1;
        metric_sum(
            &text,
            "beacon_channel_layer_events_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    eventually(20, "both refusals to be counted", || {
        (count("unknown_event") >= 1.0 && count("bad_message") >= 1.0).then_some(())
    });
    assert_eq!(count("delivered"), 1.0);
    assert_silent(&mut ws, 300);
    assert_silent(&mut other, 300);

    // The room empties: Beacon leaves the group.
    ws.close(None).unwrap();
    eventually(20, "Beacon to leave the booking's group", || {
        (!joined()).then_some(())
    });
    drop(other);
}

#[test]
fn redis_channel_layer_group_send_reaches_the_room() {
    run("core", "channels_redis.core.RedisChannelLayer");
}

#[test]
fn redis_pubsub_channel_layer_group_send_reaches_the_room() {
    run("pubsub", "channels_redis.pubsub.RedisPubSubChannelLayer");
}
