//! Arbitrary text as `protocol.toml`: loading never panics, every diagnostic points at the
//! input (at least one label, spans inside the text on character boundaries), and rendering
//! them as `beacon check` does never panics either.
#![no_main]

use beacon::protocol::{load_protocol, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Err(diags) = load_protocol(src) else {
        return;
    };
    assert!(!diags.is_empty(), "refused without a diagnostic");
    for d in &diags {
        assert!(
            !d.labels.is_empty(),
            "{} has no span: {}",
            d.code,
            d.message
        );
        for (span, _) in &d.labels {
            assert!(
                span.start <= span.end && span.end <= src.len(),
                "{} span {span:?} outside {} bytes",
                d.code,
                src.len()
            );
            assert!(
                src.is_char_boundary(span.start) && src.is_char_boundary(span.end),
                "{} span {span:?} splits a character",
                d.code
            );
        }
    }
    let _ = render("protocol.toml", src, &diags);
});
