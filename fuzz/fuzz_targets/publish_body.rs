//! A publish API body validated against the default protocol and the engine-core fixture:
//! never a panic, a client-blamed status for every refusal, and frames that are JSON objects
//! naming a server message.
#![no_main]

use beacon::publish::{prepare, MAX_BATCH, MAX_ROOM_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for proto in beacon_fuzz::protocols() {
        match prepare(proto, data) {
            Ok(p) => {
                assert!((1..=MAX_BATCH).contains(&p.items.len()));
                assert!(!p.single || p.items.len() == 1);
                for (room, frame) in &p.items {
                    assert!(!room.is_empty() && room.len() <= MAX_ROOM_BYTES);
                    let msg = beacon_fuzz::frame_json(frame);
                    let ty = msg.get("type").and_then(|t| t.as_str()).unwrap_or_default();
                    assert!(proto.server_by_wire.contains_key(ty), "published `{ty}`");
                }
            }
            Err(e) => assert!(matches!(e.status(), 400 | 404), "status {}", e.status()),
        }
    }
});
