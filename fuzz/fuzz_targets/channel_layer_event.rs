//! One copy of a Django channel-layer event, as Redis hands it over: the first byte picks the
//! layer (even: `RedisChannelLayer`, with its 12 random bytes; odd: `RedisPubSubChannelLayer`
//! on `asgi__group__booking_42`), the rest is the copy. Never a panic; what is delivered goes
//! to at least one mapped room as a frame naming a declared server message.
#![no_main]

use beacon::channel_layer::{deliverable, Flavor, Names};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, copy)) = data.split_first() else {
        return;
    };
    let proto = beacon_fuzz::channel_layer_protocol();
    let names = Names::new("asgi", "fuzz", 0);
    let flavor = if pick & 1 == 0 {
        Flavor::Core
    } else {
        Flavor::PubSub
    };
    if let Ok(d) = deliverable(proto, &names, flavor, Some("asgi__group__booking_42"), copy) {
        assert!(!d.rooms.is_empty());
        assert!(d
            .rooms
            .iter()
            .all(|r| r.starts_with("booking:") || r.starts_with("user:")));
        let msg = beacon_fuzz::frame_json(&d.frame);
        let ty = msg.get("type").and_then(|t| t.as_str()).unwrap_or_default();
        assert!(proto.server_by_wire.contains_key(ty), "delivered `{ty}`");
    }
});
