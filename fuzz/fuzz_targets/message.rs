//! One inbound text message through an admitted session: JSON decode, type lookup, schema
//! validation, rate limits and template rendering, on every endpoint of the default protocol
//! and of the engine-core fixture (which declares typed fields and templates).
#![no_main]

use beacon::session::{Effect, IdGen, Session, Turn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for proto in beacon_fuzz::protocols() {
        for ep in 0..proto.endpoints.len() {
            let params = beacon_fuzz::params_for(proto, ep);
            let identity = Some(beacon_fuzz::identity());
            let now_ms = beacon_fuzz::NOW_MS;
            let mut session = Session::new(proto, ep, params, identity, now_ms);
            let mut ids = IdGen::new(0, now_ms);
            let mut turn = Turn {
                proto,
                // Both protocols declare one token kind, `access`, which this rule mirrors.
                verifiers: &beacon_fuzz::verifiers()[..1],
                now_ms,
                ids: &mut ids,
            };
            let mut out = Vec::new();
            session.on_connect(&mut turn, &mut out);
            // Twice: the second pass meets the rate bucket and error count the first left.
            session.handle_text(&mut turn, data, &mut out);
            session.handle_text(&mut turn, data, &mut out);
            for effect in &out {
                match effect {
                    Effect::Send(frame) | Effect::Room { frame, .. } => {
                        let _ = beacon_fuzz::frame_json(frame);
                    }
                    _ => {}
                }
            }
        }
    }
});
