//! What a broker sends a node, through the RESP parser, the envelope decoder and the
//! `CLUSTER SLOTS` reader, cut into chunks the fuzzer picks, parsed as the subscribe
//! connection does (append, take every complete value, keep the rest).
//!
//! Input: one control byte (chunk size, 0 = all at once), then the stream.
#![no_main]

use beacon::broker::{envelope, partition, resp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let chunk = match usize::from(ctl) {
        0 => stream.len().max(1),
        n => n,
    };
    let whole = parse_all(stream, stream.len().max(1));
    let chunked = parse_all(stream, chunk);
    // However the stream is cut, the values (and where an error stops it) are the same.
    assert_eq!(whole, chunked, "chunking changed the parse");
    for v in whole.0 {
        if let Ok(ranges) = partition::parse_slots(&v) {
            for r in &ranges {
                let _ = partition::master_for(&ranges, r.first);
            }
        }
        if let Some(resp::Pushed::Message { payload, .. }) = resp::pushed(&v) {
            if let Ok(e) = envelope::decode(payload) {
                assert!(e.frame.len() <= payload.len());
                assert!(e.node.len() <= 255);
            }
        }
    }
});

/// Every value the stream holds, and whether it ended in an error.
fn parse_all(stream: &[u8], chunk: usize) -> (Vec<resp::Value>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match resp::parse(&buf) {
                Ok(Some((v, n))) => {
                    assert!(n > 0 && n <= buf.len());
                    buf.drain(..n);
                    out.push(v);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}
