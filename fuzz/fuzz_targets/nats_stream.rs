//! What a NATS server sends a node, through the NATS parser, cut into chunks the fuzzer picks
//! as the connection reads them; subjects of messages go through the room-name unescaping.
//!
//! Input: one control byte (chunk size, 0 = all at once), then the stream.
#![no_main]

use beacon::broker::{envelope, nats};
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
    // However the stream is cut, the operations (and where an error stops it) are the same.
    assert_eq!(whole, chunked, "chunking changed the parse");
    for op in whole.0 {
        if let nats::Op::Msg {
            subject, payload, ..
        } = op
        {
            if let Some(room) = nats::subject_room("beacon", &subject) {
                // Unescaping inverts escaping.
                assert_eq!(nats::room_subject("beacon", &room), &subject[..]);
            }
            let _ = envelope::decode(&payload);
        }
    }
});

/// Every operation the stream holds, and whether it ended in an error.
fn parse_all(stream: &[u8], chunk: usize) -> (Vec<nats::Op>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match nats::parse(&buf) {
                Ok(Some((op, n))) => {
                    assert!(n > 0 && n <= buf.len());
                    buf.drain(..n);
                    out.push(op);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}
