//! A client's byte stream through the frame decoder with production limits, cut into chunks
//! the fuzzer picks, draining events after every read as the connection loop does.
//!
//! Input: one control byte, then the stream. Control bits 0-6: chunk size (0 = all at once);
//! bit 7: between messages, move the undecoded bytes to a fresh decoder (a shard hand-off).
#![no_main]

use beacon::ws::codec::{Decoder, Event, Limits};
use libfuzzer_sys::fuzz_target;

/// Largest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let limits = beacon_fuzz::server_ws_limits();
    let chunk = match usize::from(ctl & 0x7f) {
        0 => stream.len().max(1),
        n => n,
    };
    let handoff = ctl & 0x80 != 0;
    // After draining, at most one partial frame and one open fragmented message are held.
    let held_max = MAX_HEADER + limits.max_frame_bytes + limits.max_message_bytes;

    let mut dec = Decoder::new(limits);
    let mut done = false;
    for piece in stream.chunks(chunk) {
        let before = dec.buffered_bytes();
        dec.feed(piece);
        if done {
            assert_eq!(
                dec.buffered_bytes(),
                before,
                "a finished decoder kept input"
            );
        }
        assert!(dec.buffered_bytes() <= held_max + piece.len());
        drain(&mut dec, &limits, &mut done);
        assert!(
            dec.buffered_bytes() <= held_max,
            "{} bytes held",
            dec.buffered_bytes()
        );
        dec.shrink();
        if handoff && !done {
            if let Some(rest) = dec.take_buffered() {
                dec = Decoder::new(limits);
                dec.feed(&rest);
                drain(&mut dec, &limits, &mut done);
            }
        }
    }
});

/// Takes every ready event, checking what the decoder promises about each.
fn drain(dec: &mut Decoder, limits: &Limits, done: &mut bool) {
    loop {
        let ev = match dec.next_event() {
            Ok(None) => break,
            Ok(Some(ev)) => ev,
            Err(e) => {
                assert!(!*done, "error after Close or error");
                assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                assert!(e.reason().len() <= 123);
                *done = true;
                continue;
            }
        };
        assert!(!*done, "event after Close or error");
        match ev {
            Event::Text(t) => {
                assert!(t.len() <= limits.max_message_bytes);
                assert!(std::str::from_utf8(t).is_ok(), "text event is not UTF-8");
            }
            Event::Binary(b) => assert!(b.len() <= limits.max_message_bytes),
            Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
            Event::Close(c) => {
                assert!(c.reason.len() <= 123);
                if let Some(code) = c.code {
                    assert!(
                        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                        "close code {code} accepted"
                    );
                } else {
                    assert!(c.reason.is_empty());
                }
                *done = true;
            }
        }
    }
    if *done {
        assert!(dec.is_finished());
    }
}
